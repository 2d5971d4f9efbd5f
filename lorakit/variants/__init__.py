"""The layer variants the LoRA core builds (``adapters.add_adapter`` picks one by the adapter's config): DoRA's
magnitude and direction (``dora``), IA3's scaling vectors (``ia3``) and the PiSSA/OLoRA initialisations that take
the adapter from the base weight (``inits``). Each imports only ``layers``, so the core can import them."""
