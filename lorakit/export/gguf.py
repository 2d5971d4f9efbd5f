"""``lorakit export --format gguf``: an adapter as a llama.cpp LoRA file, or merged into its base as one GGUF model,
each with an Ollama Modelfile beside it.

The base is the one the adapter records (``base_model_name_or_path``) unless ``model`` names another: the built-in
model (whose GGUF file is also the ``FROM`` of the Modelfile), a transformers folder, a ``.gguf`` file, or a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.export.gguf_layout import GGUF_DTYPES, GGUFDtype, LlamaLayout
from lorakit.export.gguf_lora import expected_lora_shapes, lora_gguf_tensors, write_lora_gguf
from lorakit.export.gguf_model import vocab_from_gguf, vocab_from_tokenizer, write_model_gguf
from lorakit.export.merge import merged_model
from lorakit.export.modelfile import ChatFormat, write_modelfile
from lorakit.io import find_adapter_folder, read_adapter_config, read_adapter_weights
from lorakit.models import BUILTIN_NAME, builtin_gguf, builtin_model_dir, is_builtin
from lorakit.quant import Scheme


@dataclass(frozen=True)
class Base:
    """The base model of an export."""

    name: str
    """As the user or the adapter's record gave it (what ``load_model`` is called with)."""
    config: dict[str, Any]
    """Its transformers ``config.json``."""
    gguf: Path | None = None
    """A GGUF file of this base: the built-in model's own, or the ``.gguf`` file named."""
    folder: Path | None = None
    """A transformers folder of this base."""

    @property
    def reference(self) -> str:
        """What a Modelfile's ``FROM`` names for this base."""
        return str(self.gguf or self.folder or self.name)

    def chat_format(self) -> ChatFormat:
        if self.gguf is not None:
            return ChatFormat.from_gguf(self.gguf)
        from transformers import AutoTokenizer

        try:
            return ChatFormat.from_tokenizer(AutoTokenizer.from_pretrained(str(self.folder or self.name)))
        except (OSError, ValueError):  # a folder without a tokenizer: the Modelfile then names no chat format
            return ChatFormat(None, None)


@dataclass(frozen=True)
class Exported:
    path: Path
    modelfile: Path
    base: Base
    alpha: float | None = None
    """The LoRA file's ``adapter.lora.alpha`` (None for a merged model)."""


def resolve_base(name: str | None, adapter_folder: Path) -> Base:
    if name is None:
        raise LorakitError(f"{adapter_folder}: the adapter records no base model; name it with --model")
    path = Path(name).expanduser()
    if is_builtin(name) or (path.is_dir() and path.resolve() == builtin_model_dir().resolve()):
        folder = builtin_model_dir()
        return Base(BUILTIN_NAME, _read_config(folder), gguf=builtin_gguf(), folder=folder)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LorakitError(f"{path}: no such GGUF file")
        return Base(str(path), config_from_gguf(path), gguf=path.resolve())
    if path.is_dir():
        return Base(str(path), _read_config(path), folder=path.resolve())
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name).to_dict()
    except (OSError, ValueError) as err:
        raise LorakitError(
            f"{name}: not the built-in model, a model folder, a .gguf file or a reachable hub id ({err}); "
            "name the base with --model"
        ) from None
    return Base(name, config)


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        raise LorakitError(f"{folder}: not a transformers model folder (no config.json)")
    config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return config


def config_from_gguf(path: Path) -> dict[str, Any]:
    """The parts of a Llama ``config.json`` a LoRA export needs, read from a llama.cpp GGUF model file."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = reader.fields

    def get(key: str) -> Any:
        if key not in fields:
            raise LorakitError(f"{path}: GGUF file lacks {key}")
        return fields[key].contents()

    arch = get("general.architecture")
    if arch != "llama":
        raise LorakitError(f"{path}: a {arch!r} GGUF file; lorakit exports GGUF for Llama-architecture models")
    n_head = int(get("llama.attention.head_count"))
    hidden = int(get("llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    if "llama.vocab_size" in fields:
        vocab = int(fields["llama.vocab_size"].contents())
    else:
        vocab = len(get("tokenizer.ggml.tokens"))
    return {
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_key_value_heads": int(get("llama.attention.head_count_kv")),
        "num_hidden_layers": int(get("llama.block_count")),
        "hidden_size": hidden,
        "intermediate_size": int(get("llama.feed_forward_length")),
        "head_dim": int(fields["llama.attention.key_length"].contents())
        if "llama.attention.key_length" in fields
        else hidden // n_head,
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in names,
    }


def _check_dtype(dtype: str) -> GGUFDtype:
    if dtype not in GGUF_DTYPES:
        raise LorakitError(f"export: unknown --dtype {dtype!r}; use one of {', '.join(GGUF_DTYPES)}")
    return dtype  # type: ignore[return-value]  # checked against GGUF_DTYPES


def export_lora_gguf(adapter: str, output: str, model: str | None = None, dtype: str = "fp32") -> Exported:
    """The adapter as a llama.cpp LoRA GGUF file (needs only the base's config, not its weights)."""
    checked = _check_dtype(dtype)
    folder = find_adapter_folder(adapter)
    config = read_adapter_config(folder)
    tensors = read_adapter_weights(folder)
    base = resolve_base(model or config.base_model_name_or_path, folder)
    layout = LlamaLayout.from_config(base.config, base.name)
    alpha, gguf_tensors = lora_gguf_tensors(config, tensors, layout, str(folder), expected_lora_shapes(base.config))
    path = write_lora_gguf(Path(output), alpha, gguf_tensors, checked, name=folder.resolve().name)
    modelfile = write_modelfile(path, base.reference, f"./{path.name}", base.chat_format())
    return Exported(path, modelfile, base, alpha)


def export_merged_gguf(
    adapter: str,
    output: str,
    model: str | None = None,
    dtype: str = "fp16",
    quantize: Scheme | None = None,
    trust_remote_code: bool = False,
) -> Exported:
    """Base + adapter merged (float32 sums) and written as one GGUF model with the base's tokenizer."""
    checked = _check_dtype(dtype)
    folder = find_adapter_folder(adapter)
    config = read_adapter_config(folder)
    base = resolve_base(model or config.base_model_name_or_path, folder)
    LlamaLayout.from_config(base.config, base.name)  # refuse another architecture before loading anything
    plain, tokenizer = merged_model(base.name, str(folder), quantize=quantize, trust_remote_code=trust_remote_code)
    model_config = plain.config.to_dict()
    if base.gguf is not None:
        add_vocab = vocab_from_gguf(base.gguf)
        chat = ChatFormat.from_gguf(base.gguf)
    else:
        add_vocab = vocab_from_tokenizer(tokenizer, model_config["vocab_size"])
        chat = ChatFormat.from_tokenizer(tokenizer)
    name = f"{Path(base.name).stem} + {folder.resolve().name}"
    path = write_model_gguf(Path(output), plain.state_dict(), model_config, add_vocab, checked, name)
    modelfile = write_modelfile(path, f"./{path.name}", None, chat)
    return Exported(path, modelfile, base)
