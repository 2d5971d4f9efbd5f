"""Quantised base weights for QLoRA: Linear weights stored as NF4 or int8, adapters in full precision.

```python
model, tokenizer = lorakit.load_model(quantize="nf4")   # every Linear but the output head, 4-bit
lorakit.add_adapter(model, lorakit.LoraConfig(r=16, target_modules="all-linear"))  # LoRA beside them
```

The quantised tensors are torchao's (``NF4Tensor``: 4-bit NormalFloat, blocks of 64, double-quantised block
scales, as in Dettmers et al. 2023; ``Int8Tensor``: symmetric per-output-channel int8). Both are plain
PyTorch, so they run on CPU and GPU. This package imports only torch; torchao is imported on first use
(``lorakit.quant.backends``), so ``import lorakit`` works without it.
"""

from __future__ import annotations

from lorakit.quant.linear import SCHEMES, QuantLinear, Scheme, dequantize, quantized_bytes
from lorakit.quant.model import dequantize_model, dequantized_linear, quantize_model, quantized_modules

__all__ = [
    "SCHEMES",
    "QuantLinear",
    "Scheme",
    "dequantize",
    "dequantize_model",
    "dequantized_linear",
    "quantize_model",
    "quantized_bytes",
    "quantized_modules",
]
