"""lorakit: LoRA fine-tuning for PyTorch models, with adapters in peft's file format.

```python
import lorakit
model, tokenizer = lorakit.load_model()                  # the built-in SmolLM2-135M-Instruct, or any model you hold
trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(r=16, lora_alpha=32, max_steps=100))
trainer.fit("my.jsonl")                                  # or a list of chat / prompt-completion records
lorakit.save_adapter(trainer.model, "my-adapter")        # adapter_config.json + adapter_model.safetensors
```

Importing it changes nothing in the process: no allocator settings, no registries, no RNG seeding.
"""

from __future__ import annotations

from lorakit._version import __version__
from lorakit.adapters import (
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    merge_adapters,
    set_adapters,
    unload,
    unmerge_adapters,
)
from lorakit.config import IA3Config, LoraConfig
from lorakit.errors import AdapterError, DataError, LorakitError, ModelError
from lorakit.io import load_adapter, save_adapter
from lorakit.methods.combine import combine_adapters
from lorakit.methods.mixed import row_adapters
from lorakit.models import load_model
from lorakit.train.config import TrainConfig
from lorakit.train.trainer import Trainer, TrainResult

__all__ = [
    "AdapterError",
    "DataError",
    "IA3Config",
    "LoraConfig",
    "LorakitError",
    "ModelError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "__version__",
    "add_adapter",
    "combine_adapters",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "load_adapter",
    "load_model",
    "merge_adapters",
    "row_adapters",
    "save_adapter",
    "set_adapters",
    "unload",
    "unmerge_adapters",
]
