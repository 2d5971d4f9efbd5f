"""How a Llama-architecture transformers model is laid out in a GGUF file, as llama.cpp's converter writes it.

Three facts, each pinned by a test against llama.cpp's own code (its converter and the ``gguf`` package's
tensor-name table):

- **Names.** ``model.layers.3.self_attn.q_proj.weight`` is ``blk.3.attn_q.weight`` (``NAMES`` below).
- **Row order of q_proj/k_proj.** transformers' Llama rotates the two *halves* of each head's dimensions
  (``rotate_half``); llama.cpp's rope rotates adjacent *pairs*. Its converter therefore permutes the rows of the
  q and k projections (weights and biases) head by head: in head ``h`` (of size ``d``), GGUF row ``h*d + 2i + t``
  is transformers row ``h*d + t*d/2 + i`` (``i < d/2``, ``t`` in {0, 1}). A LoRA update ``B A`` of these
  projections must be permuted the same way, which only touches the rows of ``B``.
- **Tensor types per precision** (``encode``): norms and other 1-D tensors stay F32; 2-D tensors take the
  requested type; Q8_0 needs rows that are a multiple of 32 long and falls back to F16 otherwise (as the
  converter does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lorakit.errors import LorakitError
from lorakit.files import atomic_write

GGUFDtype = Literal["fp32", "fp16", "bf16", "q8_0"]
GGUF_DTYPES: tuple[GGUFDtype, ...] = ("fp32", "fp16", "bf16", "q8_0")

# transformers module path (with {bid} for the layer index) -> GGUF tensor base name, for model_type "llama".
NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "model.layers.{bid}.input_layernorm": "blk.{bid}.attn_norm",
    "model.layers.{bid}.post_attention_layernorm": "blk.{bid}.ffn_norm",
    "model.layers.{bid}.self_attn.q_proj": "blk.{bid}.attn_q",
    "model.layers.{bid}.self_attn.k_proj": "blk.{bid}.attn_k",
    "model.layers.{bid}.self_attn.v_proj": "blk.{bid}.attn_v",
    "model.layers.{bid}.self_attn.o_proj": "blk.{bid}.attn_output",
    "model.layers.{bid}.mlp.gate_proj": "blk.{bid}.ffn_gate",
    "model.layers.{bid}.mlp.up_proj": "blk.{bid}.ffn_up",
    "model.layers.{bid}.mlp.down_proj": "blk.{bid}.ffn_down",
}
_PATTERNS = [
    (re.compile("^" + re.escape(hf).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$"), gguf) for hf, gguf in NAMES.items()
]
SUPPORTED = "GGUF export supports Llama-architecture models (model_type 'llama', e.g. SmolLM2, Llama 2/3)"


@dataclass(frozen=True)
class LlamaLayout:
    """What the GGUF layout of a Llama model depends on, read from its ``config.json``."""

    n_head: int
    n_kv_head: int
    n_layers: int
    tied: bool
    """The output head shares the token embedding (``tie_word_embeddings``): the GGUF has no ``output.weight``."""

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> LlamaLayout:
        if config.get("model_type") != "llama":
            raise LorakitError(
                f"{source}: model_type {config.get('model_type')!r}: {SUPPORTED}; for other models, "
                "`lorakit merge` and llama.cpp's convert_hf_to_gguf.py"
            )
        n_head = int(config["num_attention_heads"])
        return cls(
            n_head=n_head,
            n_kv_head=int(config.get("num_key_value_heads") or n_head),
            n_layers=int(config["num_hidden_layers"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )


def gguf_name(module: str) -> str | None:
    """The GGUF base name of a transformers module path (``...q_proj`` -> ``blk.N.attn_q``), None if unmapped."""
    for pattern, target in _PATTERNS:
        match = pattern.match(module)
        if match:
            return target.format(**match.groupdict())
    return None


def permute_rows(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order for a q/k projection (weight, bias, or LoRA B): rows (n_head * d, ...)."""
    d = rows.shape[0] // n_head
    return rows.reshape(n_head, 2, d // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def rope_heads(module: str, layout: LlamaLayout) -> int | None:
    """The number of heads whose rows ``module`` permutes: n_head for q_proj, n_kv_head for k_proj, else None."""
    if module.endswith("self_attn.q_proj"):
        return layout.n_head
    if module.endswith("self_attn.k_proj"):
        return layout.n_kv_head
    return None


def encode(name: str, tensor: torch.Tensor, dtype: GGUFDtype) -> tuple[np.ndarray, Any]:
    """(data, GGML type) for one tensor at the requested precision, by the converter's rules."""
    import gguf

    data = tensor.detach().to("cpu", torch.float32).numpy()
    qtype = {
        "fp32": gguf.GGMLQuantizationType.F32,
        "fp16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[dtype]
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        qtype = gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(
    path: Path, header: Callable[[Any], None], tensors: Iterable[tuple[str, torch.Tensor]], dtype: GGUFDtype
) -> Path:
    """A Llama GGUF file written atomically: ``header(writer)`` adds the metadata (and any tensor that must come
    first), then each of ``tensors`` is encoded in ``dtype``'s rules."""
    import gguf

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        header(writer)
        for tensor_name, tensor in tensors:
            data, qtype = encode(tensor_name, tensor, dtype)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def file_type(dtype: GGUFDtype) -> Any:
    import gguf

    return {
        "fp32": gguf.LlamaFileType.ALL_F32,
        "fp16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
