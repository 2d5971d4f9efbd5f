"""lorakit's fast training path (bf16 base weights, the LoRA autograd function, chunked head loss) against the
fp32 path, and activation checkpointing against none."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from lorakit.layers import Linear
from lorakit.loss import autocast
from lorakit.runs import RunConfig, train_run
from lorakit.train import trainer as trainer_module


def _losses(model_dir: Path, data: Path, output: Path, **overrides: object) -> list[float]:
    settings = dict(model=str(model_dir), data=str(data), output=str(output), max_steps=20, batch_size=4, lr=3e-2,
                    warmup_steps=2, seq_len=256, r=4, lora_alpha=8)  # fmt: skip
    result = train_run(RunConfig(**{**settings, **overrides}), progress=False)  # type: ignore[arg-type]
    records = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_bf16_fast_path_tracks_the_fp32_path_over_20_steps(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    reference = _losses(tiny_model_dir, small_chat_data, tmp_path / "fp32", precision="fp32")
    fast = _losses(tiny_model_dir, small_chat_data, tmp_path / "bf16", precision="bf16")
    assert len(reference) == len(fast) == 20
    assert reference[-1] < reference[0] - 0.1, "the reference run learns"
    # A random tiny model starts near log(49,152) = 10.8 and learns ~0.15 in 20 steps, so compare step by step:
    # within bf16's unit roundoff (2^-8 relative, 0.04 at 10.8), far below what a wrong gradient would drift.
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(reference), rtol=2**-8, atol=0.0)
    learned, learned_fast = reference[0] - min(reference), fast[0] - min(fast)
    assert abs(learned_fast - learned) < 0.25 * learned, "the fast path learns as much as the reference"


def test_bf16_stores_frozen_weights_in_bf16_and_adapters_in_fp32(tiny_model_dir: Path) -> None:
    import lorakit

    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"))
    trainer_module.prepare_for_training(model, torch.bfloat16, checkpointing=False)
    wrapped = [m for m in model.modules() if isinstance(m, Linear)]
    assert wrapped and all(m.weight.dtype == torch.bfloat16 for m in wrapped)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "inv_freq" in n), "rotary stays fp32"


def test_gradient_checkpointing_gives_the_same_losses(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    plain = _losses(tiny_model_dir, small_chat_data, tmp_path / "plain", precision="fp32", max_steps=5)
    checkpointed = _losses(
        tiny_model_dir, small_chat_data, tmp_path / "ckpt", precision="fp32", max_steps=5, gradient_checkpointing=True
    )
    torch.testing.assert_close(torch.tensor(checkpointed), torch.tensor(plain), rtol=1e-4, atol=1e-4)


def test_autocast_follows_the_models_device() -> None:
    # A GPU run must autocast on "cuda": a CPU-only autocast there would leave every matmul in fp32.
    for kind in ("cpu", "cuda"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
            context = autocast(torch.bfloat16, torch.device(kind))
        assert isinstance(context, torch.autocast) and context.device == kind
    assert not isinstance(autocast(None, torch.device("cuda")), torch.autocast)
