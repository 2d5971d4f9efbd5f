"""Getting a trained adapter out: merged model folders (``merge``)."""
