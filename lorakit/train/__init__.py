"""Training: ``Trainer`` (``trainer``: ``step``, one optimiser step; ``fit``, a run) and the parts it puts in order:
``TrainConfig`` (``config``), the optimiser and schedule (``optim``), checkpoints (``checkpoint``), fp32 attention on
a CPU (``attention``), compiled decoder layers (``compile``) and process groups (``distributed``: DDP, FSDP2). A whole
run with its folder is ``lorakit.runs``'."""
