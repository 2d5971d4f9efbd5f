"""lorakit: LoRA fine-tuning for PyTorch models, with adapters in peft's file format.

```python
import lorakit
model, tokenizer = lorakit.load_model()                  # the built-in SmolLM2-135M-Instruct
model = lorakit.add_adapter(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
...train...
lorakit.save_adapter(model, "my-adapter")                # adapter_config.json + adapter_model.safetensors
```
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "DataError",
    "IA3Config",
    "LoraConfig",
    "LorakitError",
    "ModelError",
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
