"""Optional methods beyond plain LoRA: DoRA, IA3, PiSSA/OLoRA initialisation, mixed-adapter batches, combining adapters.

``dora``, ``ia3`` and ``inits`` are layer variants the core builds on; ``mixed`` and ``combine`` work on a model
that already holds adapters.
"""
