"""Training: the loop (``loop.train``) and the parts it puts in order."""
