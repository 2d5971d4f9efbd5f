"""A peft-format LoRA adapter as a llama.cpp LoRA GGUF file (``llama-cli -m base.gguf --lora adapter.gguf``).

llama.cpp applies, for each adapted weight ``W`` of the base GGUF, ``y = W x + s B_g (A_g x)`` with one file-wide
``adapter.lora.alpha`` and ``s = alpha / r`` (``r`` read from each ``B_g``'s shape; ``s = 1`` when alpha is 0).
lorakit's adapter computes ``y = W x + s_m B A x`` with a per-module ``s_m``: ``lora_alpha / r`` (``/ sqrt(r)``
with rsLoRA, and ``rank_pattern``/``alpha_pattern`` overriding both per module). The file gets

    alpha = s_m * r_m for the config's own rank and alpha,     A_g = A,     B_g = f_m * P B,
    f_m = s_m / s_llama(alpha, r_m)                             (1 unless the module's scaling differs)

so ``s_llama B_g A_g = s_m P B A`` exactly: rsLoRA becomes the equivalent alpha ``lora_alpha * sqrt(r)``, and a
module whose pattern gives another scaling has it folded into its B. ``P`` is llama.cpp's q/k row permutation
(``gguf_layout``). An embedding's update is stored as llama.cpp's converter stores it: ``A_g = A^T`` (vocab, r).

No LoRA GGUF form exists for DoRA's magnitude, IA3's vectors, whole saved modules (``modules_to_save``), trained
biases, or an adapted embedding/output head that the base ties together (llama.cpp would apply the update to
both); those adapters are refused with a pointer to the merged export.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from lorakit.config import AdapterConfig, IA3Config, LoraConfig
from lorakit.errors import LorakitError
from lorakit.export.gguf_layout import GGUFDtype, LlamaLayout, gguf_name, permute_rows, rope_heads, write_gguf
from lorakit.io import PREFIX

MERGE_HINT = "export the merged model instead: lorakit export --format gguf --merge"
_PARTS = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")


def _refuse(source: str, what: str) -> LorakitError:
    return LorakitError(f"{source}: {what}, which a llama.cpp LoRA file cannot hold; {MERGE_HINT}")


def llama_scale(alpha: float, r: int) -> float:
    """The scaling llama.cpp applies to a LoRA pair of rank ``r`` under the file's ``alpha`` (at --lora scale 1)."""
    return alpha / r if alpha else 1.0


def lora_gguf_tensors(
    config: AdapterConfig,
    tensors: dict[str, torch.Tensor],
    layout: LlamaLayout,
    source: str,
    expected_shapes: dict[str, tuple[int, int]] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """(adapter.lora.alpha, {GGUF tensor name: float32 tensor}) for an adapter's file tensors.

    ``expected_shapes``: module path -> (out, in) of the base weight, to refuse an adapter made for another model.
    """
    if isinstance(config, IA3Config):
        raise _refuse(source, "an IA3 adapter scales activations (no A, B pair)")
    assert isinstance(config, LoraConfig)
    if config.use_dora:
        raise _refuse(source, "a DoRA adapter rescales each weight row by a learned magnitude")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        path = key.removeprefix(PREFIX)
        match = _PARTS.match(path)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = value
        elif path.endswith(".base_layer.weight"):
            continue  # the base's own embedding weights, which peft saves by default: the base GGUF has them
        elif path.endswith(".bias"):
            raise _refuse(source, f"trained biases ({path}, bias={config.bias!r})")
        else:
            raise _refuse(source, f"whole-module weights ({path}: modules_to_save or a resized vocabulary)")
    if not pairs:
        raise LorakitError(f"{source}: the adapter holds no LoRA tensors")

    alpha = config.lora_alpha * (math.sqrt(config.r) if config.use_rslora else 1.0)
    out: dict[str, torch.Tensor] = {}
    for module in sorted(pairs, key=_natural):
        parts = pairs[module]
        name = gguf_name(module)
        if name is None:
            raise LorakitError(
                f"{source}: module {module!r} has no llama.cpp tensor (llama.cpp adapts Linear layers "
                "of the blocks, the token embedding and the output head)"
            )
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A.weight")
        b = parts.get("lora_embedding_B" if embedding else "lora_B.weight")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise LorakitError(f"{source}: module {module!r} lacks a matching LoRA A, B pair")
        if layout.tied and name in ("token_embd", "output"):
            raise _refuse(
                source,
                f"{module} is adapted but the base ties its embedding and output head "
                "(llama.cpp would apply the update to both)",
            )
        r = a.shape[0]
        r_config, alpha_m = config.rank_and_alpha(module)
        if r != r_config:
            raise LorakitError(f"{source}: {module} has rank {r} but adapter_config.json implies {r_config}")
        shape = (b.shape[0], a.shape[1])  # (out, in) of the base weight; an embedding's is (dim, vocab)
        if expected_shapes is not None and module in expected_shapes:
            want = expected_shapes[module]
            if shape != want:
                raise LorakitError(
                    f"{source}: {module} updates a {shape[0]}x{shape[1]} weight but the base model's is "
                    f"{want[0]}x{want[1]} (was the adapter made for another base model?)"
                )
        scaling = alpha_m / (math.sqrt(r) if config.use_rslora else r)
        fold = scaling / llama_scale(alpha, r)
        b64 = b.to(torch.float64) * fold if fold != 1.0 else b.to(torch.float64)
        heads = rope_heads(module, layout)
        if heads is not None:
            b64 = permute_rows(b64, heads)
        lora_a = a.T if embedding else a  # llama.cpp gathers the embedding's update by token: A^T (vocab, r)
        out[f"{name}.weight.lora_a"] = lora_a.to(torch.float32).contiguous()
        out[f"{name}.weight.lora_b"] = b64.to(torch.float32).contiguous()
    return alpha, out


def _natural(module: str) -> tuple[Any, ...]:
    """Sort key that puts layer 2 before layer 10."""
    return tuple(int(p) if p.isdigit() else p for p in module.split("."))


def expected_lora_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of every weight of a Llama model that an adapter may update, from its ``config.json``."""
    hidden, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or hidden // n_head
    shapes = {"model.embed_tokens": (hidden, vocab), "lm_head": (vocab, hidden)}
    per_layer = {
        "self_attn.q_proj": (n_head * head_dim, hidden),
        "self_attn.k_proj": (n_kv * head_dim, hidden),
        "self_attn.v_proj": (n_kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, n_head * head_dim),
        "mlp.gate_proj": (ff, hidden),
        "mlp.up_proj": (ff, hidden),
        "mlp.down_proj": (hidden, ff),
    }
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def write_lora_gguf(
    path: Path, alpha: float, tensors: dict[str, torch.Tensor], dtype: GGUFDtype, name: str | None = None
) -> Path:
    """Write the LoRA GGUF file with the metadata llama.cpp's converter writes (architecture, type, alpha)."""
    import gguf

    def header(writer: Any) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        if name:
            writer.add_name(name)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    return write_gguf(path, header, tensors.items(), dtype)
