"""``lorakit serve``: an OpenAI-compatible HTTP server over one base model and many LoRA adapters.

Requests for different adapters share each forward pass (continuous batching, ``lorakit.row_adapters``).
``engine`` batches and samples (with per-row grammar masks from ``grammar``); ``protocol`` is the wire format;
``security`` the API key and body limit; ``state`` what the server holds (the engine, the adapters loaded, the
folders a request may name); ``page`` the playground page and ``app`` the routes; ``server`` loads the model and
runs uvicorn. The web stack (FastAPI, uvicorn) is the optional extra ``lorakit[serve]`` and xgrammar
``lorakit[structured]``, each imported only when used.
"""
