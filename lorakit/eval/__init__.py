"""Running a trained model without training it: batched generation (``generate``), a terminal chat (``chat``),
merging for inference (``inference``), replies scored against references (``metrics``, ``replies``), loss and
perplexity (``perplexity``), and tables and files of the results (``report``). Generic: the built-in tasks'
scorers are ``lorakit.tasks``'."""
