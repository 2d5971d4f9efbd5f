"""A whole Llama-architecture model (a merged one) as one GGUF file that llama.cpp runs, tokenizer included.

The hyper-parameters, tensor names, q/k row order and tensor types are those llama.cpp's
``convert_hf_to_gguf.py`` writes (``gguf_layout``). The tokenizer comes from one of two places:

- a GGUF file of the same base (the built-in model's own file, or ``--model base.gguf``): its ``tokenizer.*``
  fields are copied unchanged, so the export tokenizes exactly as the base file does in llama.cpp;
- a transformers tokenizer: a byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``) whose pre-tokenizer is
  one this module recognises (``PRE_TOKENIZERS``), with its merges, special tokens and chat template. llama.cpp
  names its pre-tokenizers by hashing sample encodings; lorakit names only the few it can check, and refuses
  others rather than write a file that splits text differently from the model's own tokenizer.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import LorakitError
from lorakit.export.gguf_layout import (
    GGUFDtype,
    LlamaLayout,
    file_type,
    gguf_name,
    permute_rows,
    rope_heads,
    write_gguf,
)

AddVocab = Callable[[Any], None]
"""Writes the ``tokenizer.*`` fields into a ``gguf.GGUFWriter``."""

# A tokenizer.json pre-tokenizer (as JSON, options lorakit does not depend on dropped) -> llama.cpp's name.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
PRE_TOKENIZERS: list[tuple[dict[str, Any], str]] = [
    (_BYTE_LEVEL, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]}, "smollm"),
]


def hparams(config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(GGUFWriter method, value) for a Llama config's hyper-parameters, as llama.cpp's converter writes them."""
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    yield "add_block_count", config["num_hidden_layers"]
    yield "add_context_length", config["max_position_embeddings"]
    yield "add_embedding_length", config["hidden_size"]
    yield "add_feed_forward_length", config["intermediate_size"]
    yield "add_head_count", n_head
    yield "add_head_count_kv", config.get("num_key_value_heads") or n_head
    rope = rope_parameters(config)
    if rope.get("rope_type") == "linear":
        import gguf

        yield "add_rope_scaling_type", gguf.RopeScalingType.LINEAR
        yield "add_rope_scaling_factor", float(rope["factor"])
    yield "add_rope_freq_base", float(rope.get("rope_theta", 10000.0))
    yield "add_layer_norm_rms_eps", float(config["rms_norm_eps"])
    if config.get("head_dim") is not None:
        yield "add_key_length", head_dim
        yield "add_value_length", head_dim
    yield "add_vocab_size", config["vocab_size"]
    yield "add_rope_dimension_count", head_dim


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The rope settings (transformers 5's ``rope_parameters``, or the older ``rope_theta`` + ``rope_scaling``)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    rope.setdefault("rope_type", rope.get("type", "default"))
    if rope["rope_type"] not in ("default", "linear", "llama3"):
        raise LorakitError(
            f"rope_type {rope['rope_type']!r}: lorakit writes GGUF for default, linear and llama3 rope; "
            "use `lorakit merge` and llama.cpp's convert_hf_to_gguf.py for this model"
        )
    return rope


def llama3_rope_factors(config: dict[str, Any]) -> torch.Tensor | None:
    """Llama 3's per-frequency rope divisors (llama.cpp reads them from ``rope_freqs.weight``), or None.

    Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` keep their frequency, those
    longer than ``... / low_freq_factor`` are slowed by ``factor``, and the band between is interpolated.
    """
    rope = rope_parameters(config)
    if rope["rope_type"] != "llama3":
        return None
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (rope.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_len = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)  # (head_dim / 2,)


def model_tensors(state: dict[str, torch.Tensor], layout: LlamaLayout) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor in llama.cpp's row order) for every weight of a Llama state dict."""
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module == "lm_head" and layout.tied:
            continue  # llama.cpp uses token_embd for a tied output head
        name = gguf_name(module)
        if name is None:
            raise LorakitError(f"tensor {key!r} has no place in a llama.cpp Llama GGUF file")
        heads = rope_heads(module, layout)
        yield f"{name}.{leaf}", permute_rows(value, heads) if heads is not None else value


def write_model_gguf(
    path: Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    add_vocab: AddVocab,
    dtype: GGUFDtype,
    name: str,
) -> Path:
    """Write a Llama model (its transformers state dict and config) as one GGUF file."""
    import gguf

    layout = LlamaLayout.from_config(config, "the base model's config")
    factors = llama3_rope_factors(config)

    def header(writer: Any) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        for method, value in hparams(config):
            getattr(writer, method)(value)
        writer.add_file_type(file_type(dtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer)
        if factors is not None:
            writer.add_tensor("rope_freqs.weight", factors.numpy())

    return write_gguf(path, header, model_tensors(state, layout), dtype)


def vocab_from_gguf(source: Path) -> AddVocab:
    """Copies every ``tokenizer.*`` field of the GGUF file ``source``, with its value types."""
    import gguf

    reader = gguf.GGUFReader(source)
    fields = [
        (key, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.")
    ]
    if not any(key == gguf.Keys.Tokenizer.LIST for key, *_ in fields):
        raise LorakitError(f"{source}: the GGUF file holds no tokenizer")

    def add(writer: Any) -> None:
        for key, value, vtype, sub_type in fields:
            writer.add_key_value(key, value, vtype, sub_type)

    return add


def vocab_from_tokenizer(tokenizer: Any, vocab_size: int) -> AddVocab:
    """A transformers byte-level BPE tokenizer as llama.cpp's ``gpt2`` tokenizer fields."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise LorakitError(
            "lorakit writes GGUF tokenizers for byte-level BPE tokenizers only (this one is "
            f"{model.get('type', type(tokenizer).__name__)}); export with --model <a GGUF file of the base> to take "
            "the tokenizer from it, or use `lorakit merge` and llama.cpp's convert_hf_to_gguf.py"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise LorakitError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} rows")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    probe = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    add_eos = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(Path(tmp), load_merges=True, n_vocab=vocab_size)

    def add(writer: Any) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special.add_to_gguf(writer, quiet=True)
        writer.add_add_bos_token(add_bos)  # what the tokenizer does, whatever its config says
        writer.add_add_eos_token(add_eos)

    return add


def pre_tokenizer_name(pre_tokenizer: Any) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (``PRE_TOKENIZERS``); refuses one it does not know."""
    for pattern, name in PRE_TOKENIZERS:
        if _matches(pre_tokenizer, pattern):
            return name
    raise LorakitError(
        f"lorakit does not know llama.cpp's name for this pre-tokenizer ({json.dumps(pre_tokenizer)[:120]}); export "
        "with --model <a GGUF file of the base> to take the tokenizer from it, or use `lorakit merge` and "
        "llama.cpp's convert_hf_to_gguf.py"
    )


def _matches(value: Any, pattern: Any) -> bool:
    """``value`` has every key of ``pattern`` with a matching value (lists element by element)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(value) == len(pattern)
            and all(_matches(v, p) for v, p in zip(value, pattern, strict=True))
        )
    return bool(value == pattern)
