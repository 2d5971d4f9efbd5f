"""Device and precision rules (lorakit.models), checked without a GPU: CUDA's answers are faked for the selection
logic, which is all that reads them; every command that runs a model takes --device and --precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakit.cli import build_parser
from lorakit.cli.common import train_config_from
from lorakit.cli.train import RunConfig
from lorakit.errors import ModelError
from lorakit.memory import peak_gpu_mb
from lorakit.models import load_dtype, load_model, native_bf16, resolve_device, resolve_precision
from tests.tiny import cli_error_line

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA answers")


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 2, capability: tuple[int, int] = (8, 0)) -> None:
    """This process believes it has ``count`` CUDA devices of ``capability``, and that bf16 is 'supported' on
    every one of them, as ``torch.cuda.is_bf16_supported`` says even on a T4 (emulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def _fake_mps(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)


def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fake_mps(monkeypatch, False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    _fake_mps(monkeypatch, True)
    assert resolve_device("auto") == torch.device("mps")
    _fake_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda", 0), "CUDA before MPS"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # torchrun's rank 1 after set_device(1)
    assert resolve_device("auto") == torch.device("cuda", 1) == resolve_device("cuda")


def test_named_devices_are_checked_against_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, count=2)
    _fake_mps(monkeypatch, False)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ModelError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ModelError, match="no Apple MPS device"):
        resolve_device("mps")
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ModelError, match="use auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA device here"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("capability", "auto", "card"),
    [((7, 0), torch.float16, "V100"), ((7, 5), torch.float16, "T4"), ((8, 0), torch.bfloat16, "A100"),
     ((8, 6), torch.bfloat16, "RTX 3090"), ((9, 0), torch.bfloat16, "H100/H200")],
)  # fmt: skip
def test_auto_precision_on_cuda_is_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], auto: torch.dtype, card: str
) -> None:
    _fake_cuda(monkeypatch, capability=capability)
    cuda = torch.device("cuda", 0)
    assert torch.cuda.is_bf16_supported(), "the fake answers as torch does on a T4: True"
    assert native_bf16(cuda) == (auto == torch.bfloat16), card
    assert resolve_precision("auto", cuda) == auto, f"{card}: bf16 if native, else fp16 (loss-scaled)"
    assert resolve_precision("fp32", cuda) is None
    assert resolve_precision("bf16", cuda) == torch.bfloat16, "asked for: taken, emulated or not"
    assert resolve_precision("fp16", cuda) == torch.float16


def test_auto_precision_on_cpu_and_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", cpu) is None, "no fp16 by default on a CPU: fp32"
    assert resolve_precision("fp16", cpu) == torch.float16, "asked for: taken"
    assert resolve_precision("auto", torch.device("mps")) is None
    with pytest.raises(ModelError, match="--precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        resolve_precision("fp8", cpu)


def test_models_load_in_the_compute_dtype_off_the_cpu_only() -> None:
    # (only the device's type is read: no CUDA needed)
    assert load_dtype(torch.device("cuda", 0), torch.bfloat16) == torch.bfloat16
    assert load_dtype(torch.device("cuda", 0), None) is None
    assert load_dtype(torch.device("cpu"), torch.bfloat16) is None, "CPU runs load fp32 and cast, as before"
    assert peak_gpu_mb(torch.device("cpu")) is None


def test_load_model_puts_the_model_on_the_device_named(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = load_model(str(tiny_model_dir), dtype="bf16", device="auto")
    assert {(p.device.type, p.dtype) for p in model.parameters()} <= {("cpu", torch.bfloat16), ("mps", torch.bfloat16)}


MODEL_COMMANDS = {
    "eval": [], "generate": ["--prompt", "hi"], "chat": [], "serve": [], "compare": [], "demo": [],
}  # fmt: skip


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "train"])
def test_every_command_that_runs_a_model_takes_device_and_precision(command: str) -> None:
    parser = build_parser()
    extra = MODEL_COMMANDS.get(command, [])
    args = parser.parse_args([command, *extra])
    if command == "train":
        config = train_config_from(args, RunConfig)
        assert (config.device, config.precision) == ("auto", "auto")
        args = parser.parse_args([command, "--device", "cuda:1", "--precision", "fp16"])
        config = train_config_from(args, RunConfig)
        assert (config.device, config.precision) == ("cuda:1", "fp16")
        return
    assert (args.device, args.precision) == ("auto", "auto")
    args = parser.parse_args([command, *extra, "--device", "cuda:1", "--precision", "fp16"])
    assert (args.device, args.precision) == ("cuda:1", "fp16")


def test_merge_takes_a_device() -> None:
    args = build_parser().parse_args(["merge", "--adapter", "a", "--output", "o", "--device", "cpu"])
    assert args.device == "cpu"


def test_serve_dtype_is_the_old_name_of_precision(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--precision", "fp16"]).precision == "fp16"
    assert parser.parse_args(["serve", "--dtype", "bf16"]).precision == "bf16"
    assert "--dtype is deprecated, use --precision" in capsys.readouterr().err


@NO_CUDA
def test_a_device_this_machine_lacks_is_a_one_line_error(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = cli_error_line(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "hi", "--device", "cuda"])
    assert "--device cuda: no CUDA device here" in line
    train = ["train", "--model", str(tiny_model_dir), "--data", str(small_chat_data), "--output", str(tmp_path / "r")]
    assert "--device 'tpu': use auto, cpu, cuda" in cli_error_line(capsys, [*train, "--device", "tpu"])
    assert not (tmp_path / "r").exists(), "refused before the run folder is made"
    assert "--precision must be one of auto, fp32, bf16, fp16" in cli_error_line(capsys, [*train, "--precision", "fp8"])


def test_generate_says_where_it_runs(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lorakit.cli import main

    argv = ["generate", "--model", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu"]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert "lorakit: running on cpu (" in capsys.readouterr().err
    assert main([*argv, "--precision", "fp16"]) == 0
    assert capsys.readouterr().err.strip().endswith("in float16")
