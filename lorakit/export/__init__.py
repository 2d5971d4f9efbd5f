"""Getting a trained adapter out: merged model folders (``merge``), and GGUF files for llama.cpp and Ollama
(``gguf``: a LoRA adapter file or the merged model, with an Ollama ``Modelfile`` from ``modelfile``; the tensor
layout in ``gguf_layout``, the adapter's tensors in ``gguf_lora``, the model's in ``gguf_model``)."""
