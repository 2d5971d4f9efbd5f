"""Loading the base model and adapters for ``lorakit serve``, and running the app under uvicorn."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import LorakitError
from lorakit.models import (
    BUILTIN_NAME,
    Precision,
    describe_device,
    is_builtin,
    load_dtype,
    load_model,
    resolve_device,
    resolve_precision,
)
from lorakit.quant import Scheme
from lorakit.serve.engine import Engine
from lorakit.serve.security import DEFAULT_MAX_REQUEST_BYTES, check_exposure

Dtype = Precision  # the serving precision (``lorakit serve --precision``; ``--dtype`` is its old name)


def parse_adapter_flags(flags: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` pairs from ``--adapter`` (a bare ``DIR`` is named after its folder)."""
    adapters: dict[str, Path] = {}
    for flag in flags:
        name, sep, folder = flag.partition("=")
        if not sep:
            name, folder = Path(flag).name, flag
        if not name or not folder:
            raise LorakitError(f"--adapter {flag!r}: expected NAME=DIR")
        if name in adapters:
            raise LorakitError(f"--adapter: the name {name!r} is given twice")
        adapters[name] = Path(folder)
    return adapters


def load_engine(
    model: str | None, dtype: Dtype = "auto", max_batch: int = 8, trust_remote_code: bool = False,
    quantize: Scheme | None = None,
    device: str = "auto",
) -> tuple[Engine, str]:  # fmt: skip
    """The base model on ``device`` in its serving precision ``dtype``, wrapped in an engine; and the name clients
    use for it.

    "auto" is bf16 where the device runs it natively, else fp16 on CUDA, else fp32 (as ``lorakit generate``);
    adapters stay float32 (they are loaded after the cast), so their small updates are computed at full precision.
    ``quantize``: the base's Linear weights stored as QLoRA training stored them (its other weights in the compute
    dtype).
    """
    target = resolve_device(device)
    compute = resolve_precision(dtype, target)
    base, tokenizer = load_model(
        model, dtype=load_dtype(target, compute), quantize=quantize, trust_remote_code=trust_remote_code,
        device=target,
    )  # fmt: skip
    weight = next(base.parameters())
    if compute is not None and weight.dtype == torch.float32:
        base.to(compute)
    name = BUILTIN_NAME if is_builtin(model) else str(model)
    return Engine(base.eval(), tokenizer, max_batch=max_batch), name


@dataclass(frozen=True)
class Access:
    """Who may use the server and how much they may send (``lorakit.serve.security``)."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    allow_unauthenticated: bool = False


def serve(
    model: str | None = None,
    adapters: dict[str, Path] | None = None,
    adapter_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_new_tokens: int = 256,
    max_input_tokens: int = 2048,
    dtype: Dtype = "auto",
    trust_remote_code: bool = False,
    quantize: Scheme | None = None,
    access: Access = Access(),  # frozen: a shared default is safe
    device: str = "auto",
) -> None:
    """Load everything, then answer HTTP requests until interrupted."""
    try:
        import uvicorn

        from lorakit.serve.app import create_app
    except ImportError as err:
        raise LorakitError(f"lorakit serve needs its web stack: pip install 'lorakit[serve]' ({err})") from None
    check_exposure(host, access.api_key, access.allow_unauthenticated)
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise LorakitError(f"--adapter-dir {adapter_dir}: no such folder")
    state = build_state(
        model, adapters or {}, adapter_dir, max_batch, max_new_tokens, max_input_tokens, dtype, trust_remote_code,
        quantize=quantize, access=access, device=device,
    )  # fmt: skip
    weight = next(state.engine.model.parameters())
    print(f"lorakit serve: on {describe_device(weight.device)} in {str(weight.dtype).removeprefix('torch.')}")
    shown = f"[{host}]" if ":" in host else host
    print(
        f"lorakit serve: http://{shown}:{port}/ (playground), http://{shown}:{port}/v1  "
        f"models: {', '.join([state.base_name, *state.adapters])}"
    )
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning")
    state.engine.close()


def build_state(
    model: str | None, adapters: dict[str, Path], adapter_dir: str | None, max_batch: int = 8,
    max_new_tokens: int = 256, max_input_tokens: int = 2048, dtype: Dtype = "auto", trust_remote_code: bool = False,
    quantize: Scheme | None = None,
    access: Access = Access(),  # frozen: a shared default is safe
    device: str = "auto",
) -> Any:  # fmt: skip
    """A ready ``ServerState``: model, engine and the ``--adapter`` adapters loaded."""
    from lorakit.io import find_adapter_folder
    from lorakit.runs.origin import adapter_origin, check_same_base
    from lorakit.serve.protocol import ApiError
    from lorakit.serve.state import ServerState

    for folder in adapters.values():
        find_adapter_folder(folder)  # a wrong path fails before the model is loaded
    if model is None:  # the base the adapters were trained on; each is checked against it below
        model = next((b for f in adapters.values() if (b := adapter_origin(f).base_model) is not None), None)
    for folder in adapters.values():
        check_same_base(folder, model)  # one line, before the model is loaded
    engine, name = load_engine(model, dtype, max_batch, trust_remote_code, quantize, device)
    state = ServerState(engine, name, Path(adapter_dir) if adapter_dir else None, max_new_tokens, max_input_tokens,
                        base_model=model, quantization=quantize,
                        api_key=access.api_key, cors_origins=access.cors_origins,
                        max_request_bytes=access.max_request_bytes)  # fmt: skip
    for adapter, folder in adapters.items():
        try:
            engine.call(functools.partial(state.load, adapter, folder)).result()
        except ApiError as err:
            engine.close()
            raise LorakitError(f"--adapter {adapter}: {err.message}") from None
    return state
