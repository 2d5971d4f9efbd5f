"""``lorakit serve``: an OpenAI-compatible HTTP server over one base model and many LoRA adapters.

Requests for different adapters share each forward pass (continuous batching, ``lorakit.row_adapters``).
``engine`` batches and samples (with per-row grammar masks from ``grammar``); ``protocol`` is the wire format;
``security`` the API key and body limit; ``app`` the routes and ``page`` the playground page; ``server`` loads the
model and runs uvicorn. The web stack (FastAPI, uvicorn) is the optional extra ``lorakit[serve]`` and xgrammar
``lorakit[structured]``, each imported only when used.
"""
