"""What the server holds: the engine over the base model, the adapters loaded into it (``ServerState``), and
which adapter folders a request may name (one plain folder name under ``--adapter-dir``)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.adapters import adapter_configs, delete_adapter
from lorakit.errors import LorakitError
from lorakit.io import load_adapter
from lorakit.methods.mixed import row_adapters
from lorakit.runs.origin import check_same_base, trained_base
from lorakit.serve.engine import Engine
from lorakit.serve.grammar import Grammars
from lorakit.serve.protocol import ApiError, TokenTexts
from lorakit.serve.security import DEFAULT_MAX_REQUEST_BYTES

# An adapter name is one plain folder name: no separators, no "..", nothing a path could hide in.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class ServerState:
    engine: Engine
    base_name: str
    adapter_dir: Path | None = None
    max_new_tokens: int = 256
    max_input_tokens: int = 2048
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder it was loaded from
    base_model: str | None = None  # what --model named (None: the built-in): adapters of another base are refused
    system_prompts: dict[str, str] = field(default_factory=dict)  # adapter -> the system prompt it was trained with
    quantization: str | None = None  # the base's: "nf4", "int8", or None for float weights
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.engine.tokenizer))
        self.grammars = Grammars(self.engine.tokenizer, vocab)
        self.texts = TokenTexts(self.engine.tokenizer)

    @property
    def model(self) -> Any:
        return self.engine.model

    def load(self, name: str, folder: Path) -> None:
        """Load an adapter (on the engine thread) and check that it fits this base and can join mixed batches."""
        if name == self.base_name or name in adapter_configs(self.model):
            raise ApiError(409, f"an adapter or model named {name!r} is already loaded", "lora_name")
        origin = check_same_base(folder, self.base_model)  # one line: an adapter of another base is refused
        trained, served = trained_base(folder), self.quantization or "float"  # as its run's settings say
        if trained is not None and trained != served:
            flag = "none" if trained == "float" else trained
            raise ApiError(400, f"adapter {name!r} was trained on a {trained} base and this server's base is {served}: "
                           f"serve it from a server started with --quantize {flag}", "lora_path")  # fmt: skip
        load_adapter(self.model, folder, name)
        self.model.eval()  # the new LoRA modules start in training mode (their dropout would be on)
        try:
            with row_adapters(self.model, [name]):
                pass
        except LorakitError:
            delete_adapter(self.model, name)
            raise
        self.adapters[name] = str(folder)
        if origin.system_prompt:
            self.system_prompts[name] = origin.system_prompt

    def unload(self, name: str) -> None:
        if name not in self.adapters:
            raise ApiError(404, f"adapter {name!r} is not loaded", "lora_name", "model_not_found")
        if self.engine.in_use(name):
            raise ApiError(409, f"adapter {name!r} has requests in flight; retry when they are done", "lora_name")
        delete_adapter(self.model, name)
        del self.adapters[name]
        self.system_prompts.pop(name, None)


def with_system_prompt(state: ServerState, adapter: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation, opened with the adapter's training system prompt when the request sends none."""
    prompt = state.system_prompts.get(adapter) if adapter else None
    if prompt is None or any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": prompt}, *messages]


def adapter_name(name: str, param: str = "lora_name") -> str:
    if not ADAPTER_NAME.fullmatch(name) or ".." in name:
        raise ApiError(400, f"{param}: {name!r} is not an adapter name (letters, digits, . _ -; up to 100)", param)
    return name


def adapter_folder(state: ServerState, path: str) -> Path:
    """``path`` as a folder inside ``--adapter-dir`` (relative paths start there); anything outside it is refused,
    symbolic links followed."""
    if state.adapter_dir is None:
        raise ApiError(
            400, "this server was started without --adapter-dir, so it loads no adapters at run time", "lora_path"
        )
    root = state.adapter_dir.resolve()
    try:
        folder = (state.adapter_dir / path).resolve()
    except (OSError, ValueError):  # a NUL byte, a loop of links
        raise ApiError(400, "lora_path: not a usable path", "lora_path") from None
    if folder == root or not folder.is_relative_to(root):
        raise ApiError(400, "lora_path: must be an adapter folder inside the server's --adapter-dir", "lora_path")
    if not folder.is_dir():
        raise ApiError(404, "lora_path: no such adapter folder under the server's --adapter-dir", "lora_path")
    return folder


def available_adapters(state: ServerState) -> list[str]:
    """Adapter folders under ``--adapter-dir`` that could be loaded by name."""
    folder = state.adapter_dir
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and ADAPTER_NAME.fullmatch(p.name))
