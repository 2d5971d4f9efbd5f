"""``lorakit serve``: an OpenAI-compatible HTTP server over one base model and many LoRA adapters.

Requests for different adapters share each forward pass (continuous batching, ``lorakit.row_adapters``).
The web stack (FastAPI, uvicorn) is the optional extra ``lorakit[serve]``, imported only when serving.
"""
