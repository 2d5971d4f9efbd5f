"""``lorakit combine`` through the real CLI entry point: its output folder, loaded by the real ``peft``, gives the
logits of peft's own ``add_weighted_adapter`` on the same two adapters; every user mistake is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from transformers import LlamaForCausalLM

import lorakit
from lorakit.cli import main
from tests.tiny import cli_error_line, logits_of, token_ids

FIRST = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
SECOND = {"r": 4, "lora_alpha": 4, "target_modules": ["v_proj", "down_proj"]}
WEIGHTS = [0.7, -1.3]


def _base(model_dir: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def peft_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two random r=4 LoRA adapters written by peft itself, with different alphas and target modules."""
    root = tmp_path_factory.mktemp("peft-adapters")
    torch.manual_seed(7)
    for name, spec in (("one", FIRST), ("two", SECOND)):
        model = peft.get_peft_model(_base(tiny_model_dir), peft.LoraConfig(**spec, init_lora_weights=False))
        model.save_pretrained(root / name)
    return root / "one", root / "two"


def _peft_reference(model_dir: Path, adapters: tuple[Path, Path], method: str, rank: int | None) -> torch.Tensor:
    """peft's add_weighted_adapter on the same two folders: the logits the combined adapter must reproduce."""
    model = peft.PeftModel.from_pretrained(_base(model_dir), adapters[0], adapter_name="one")
    model.load_adapter(adapters[1], adapter_name="two")
    model.add_weighted_adapter(["one", "two"], WEIGHTS, "mix", combination_type=method, svd_rank=rank)
    model.set_adapter("mix")
    return logits_of(model.eval(), token_ids())


@pytest.mark.parametrize(("method", "rank", "expected_rank"), [("svd", 3, 3), ("cat", None, 8)])
def test_output_loads_in_peft_and_matches_add_weighted_adapter(
    method: str,
    rank: int | None,
    expected_rank: int,
    tiny_model_dir: Path,
    peft_adapters: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "mix"
    argv = ["combine", "--model", str(tiny_model_dir), "--adapter", str(peft_adapters[0]),
            "--adapter", str(peft_adapters[1]), "--weights", ",".join(map(str, WEIGHTS)), "--method", method,
            "--output", str(out)] + (["--rank", str(rank)] if rank else [])  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"combined 2 adapter(s) with method {method} into a rank-{expected_rank} adapter in {out}/"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == expected_rank
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]

    base = _base(tiny_model_dir)
    theirs = peft.PeftModel.from_pretrained(_base(tiny_model_dir), out).eval()  # the CLI's output, read by peft
    expected = _peft_reference(tiny_model_dir, peft_adapters, method, rank)
    assert (expected - logits_of(base, token_ids())).abs().max() > 1e-3  # the combination changes the output
    torch.testing.assert_close(logits_of(theirs, token_ids()), expected, atol=1e-5, rtol=0)


def test_one_adapter_is_rescaled_and_overwrite_replaces(
    tiny_model_dir: Path, peft_adapters: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in peft, one adapter with a weight is legitimate: its update times the weight (method linear)."""
    out = tmp_path / "half"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # an adapter already there: replaced only with --overwrite
    argv = ["combine", "--model", str(tiny_model_dir), "--adapter", str(peft_adapters[0]), "--weights", "0.5",
            "--method", "cat", "--output", str(out), "--overwrite"]  # fmt: skip
    assert main(argv) == 0
    assert "with method linear into a rank-4 adapter" in capsys.readouterr().out
    model = lorakit.load_adapter(_base(tiny_model_dir), out, "scaled")
    lorakit.load_adapter(model, peft_adapters[0], "one")
    layer = model.model.layers[0].self_attn.q_proj
    want = 0.5 * layer.delta_weight("one").double()
    torch.testing.assert_close(layer.delta_weight("scaled").double(), want, atol=1e-6, rtol=0)
    # lorakit's own commands read it too
    assert main(["generate", "--model", str(tiny_model_dir), "--adapter", str(out), "--prompt", "Hi",
                 "--max-new-tokens", "2"]) == 0  # fmt: skip


def _lorakit_adapter(folder: Path, config: lorakit.LoraConfig | lorakit.IA3Config, model_dir: Path) -> Path:
    lorakit.save_adapter(lorakit.add_adapter(_base(model_dir), config), folder)
    return folder


@pytest.fixture(scope="module")
def odd_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd-adapters")
    return {
        "ia3": _lorakit_adapter(root / "ia3", lorakit.IA3Config(), tiny_model_dir),
        "dora": _lorakit_adapter(root / "dora", lorakit.LoraConfig(r=4, use_dora=True), tiny_model_dir),
        "r2": _lorakit_adapter(root / "r2", lorakit.LoraConfig(r=2), tiny_model_dir),
        "saves": _lorakit_adapter(root / "saves", lorakit.LoraConfig(r=4, modules_to_save=["lm_head"]), tiny_model_dir),
    }


# (extra argv, adapters by key ("one"/"two" are peft's), fragments the one line must contain)
ERRORS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "no adapter": (["--weights", "1"], [], ["--adapter"]),
    "too few weights": (["--weights", "0.7"], ["one", "two"], ["--weights", "1 value(s) for 2"]),
    "unparsable weights": (["--weights", "0.7,heavy"], ["one", "two"], ["--weights", "'heavy'"]),
    "non-finite weight": (["--weights", "nan,1"], ["one", "two"], ["--weights", "'nan'"]),
    "rank without svd": (["--weights", "1,1", "--method", "cat", "--rank", "2"], ["one", "two"], ["--rank", "svd"]),
    "rank zero": (["--weights", "1,1", "--rank", "0"], ["one", "two"], ["--rank", "positive"]),
    "rank of one adapter": (["--weights", "1", "--rank", "2"], ["one"], ["--rank", "single adapter"]),
    "unknown method": (["--weights", "1,1", "--method", "ties"], ["one", "two"], ["--method", "ties"]),
    "missing folder": (["--weights", "1,1"], ["one", "nowhere"], ["nowhere", "no such adapter folder"]),
    "IA3 and LoRA": (["--weights", "1,1"], ["one", "ia3"], ["different kinds", "ia3 (IA3)"]),
    "two IA3": (["--weights", "1,1"], ["ia3", "ia3"], ["IA3 adapter", "LoRA adapters only"]),
    "DoRA": (["--weights", "1,1"], ["one", "dora"], ["dora", "DoRA", "magnitude"]),
    "modules_to_save": (["--weights", "1,1"], ["saves", "one"], ["saves", "modules_to_save"]),
    "linear with unequal ranks": (
        ["--weights", "1,1", "--method", "linear"],
        ["one", "r2"],
        ["--method linear", "r=2", "--method cat or svd"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line(
    case: str,
    tiny_model_dir: Path,
    peft_adapters: tuple[Path, Path],
    odd_adapters: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra, keys, fragments = ERRORS[case]
    folders = {"one": peft_adapters[0], "two": peft_adapters[1], "nowhere": tmp_path / "nowhere", **odd_adapters}
    out = tmp_path / "out"
    argv = ["combine", "--model", str(tiny_model_dir), "--output", str(out), *extra]
    for key in keys:
        argv += ["--adapter", str(folders[key])]
    line = cli_error_line(capsys, argv)
    for fragment in fragments:
        assert fragment in line, line
    assert not (out / "adapter_config.json").exists()


def test_output_that_holds_an_adapter_is_refused(
    peft_adapters: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"mine")
    argv = ["combine", "--adapter", str(peft_adapters[0]), "--adapter", str(peft_adapters[1]), "--weights", "1,1",
            "--output", str(out)]  # fmt: skip
    line = cli_error_line(capsys, argv)  # refused before the (built-in, default) model is loaded
    assert str(out) in line and "--overwrite" in line
    assert (out / "adapter_model.safetensors").read_bytes() == b"mine"
