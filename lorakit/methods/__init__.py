"""Methods that work on a model already holding adapters: several adapters in one batch, one per row (``mixed``),
and combining adapters into one (``combine``). The layer variants the core builds (DoRA, IA3, PiSSA/OLoRA) are
``lorakit.variants``."""
