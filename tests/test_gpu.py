"""On a CUDA device: every path runs there, in the precision the device runs natively, and agrees with the CPU.

Run by ``pytest -m gpu`` (``bench/gpu_check.py`` runs it first); each test skips without a CUDA device.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.cli import main as cli_main
from lorakit.io import adapter_tensors
from lorakit.models import load_model, resolve_device, resolve_precision
from lorakit.quant import quantize_model, quantized_modules
from lorakit.quant.linear import dequantize, quantized_bytes
from lorakit.runs import RunConfig, train_run
from tests.tiny import randomize_lora_b, tiny_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SETTINGS = dict(max_steps=4, batch_size=4, lr=3e-3, warmup_steps=1, seq_len=256, r=4, lora_alpha=8)
CUDA = "cuda"


def _trainer(folder: Path, device: str, precision: str, **changes: Any) -> lorakit.Trainer:
    model = AutoModelForCausalLM.from_pretrained(folder).to(device)
    config = lorakit.TrainConfig(**{**SETTINGS, "precision": precision, **changes})
    return lorakit.Trainer(model, AutoTokenizer.from_pretrained(folder), config)


def _losses(trainer: lorakit.Trainer, data: Path) -> list[dict[str, float]]:
    seen: list[dict[str, float]] = []
    trainer.fit(data, on_step=lambda _, m: seen.append(m), progress=False)
    return seen


def test_auto_is_the_gpu_and_precision_follows_its_capability() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    native = torch.cuda.get_device_capability(device) >= (8, 0)
    assert resolve_precision("auto", device) == (torch.bfloat16 if native else torch.float16)


def test_load_model_lands_on_the_gpu_in_the_compute_dtype(tiny_model_dir: Path) -> None:
    model, _ = load_model(str(tiny_model_dir), dtype="bf16", device=CUDA)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}


def test_trainer_on_the_gpu_matches_the_cpu_in_fp32(tiny_model_dir: Path, small_chat_data: Path) -> None:
    cpu, gpu = _trainer(tiny_model_dir, "cpu", "fp32"), _trainer(tiny_model_dir, CUDA, "fp32")
    assert gpu.device.type == "cuda" and gpu.autocast is None
    a, b = _losses(cpu, small_chat_data), _losses(gpu, small_chat_data)
    for x, y in zip(a, b, strict=True):  # the same sums in another order
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
        assert y["peak_gpu_mb"] > 0 and "peak_gpu_mb" not in x
    on_cpu = adapter_tensors(cpu.model, "default")
    for k, v in adapter_tensors(gpu.model, "default").items():
        torch.testing.assert_close(v.cpu(), on_cpu[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16_bit_training_on_the_gpu_follows_fp32(tiny_model_dir: Path, small_chat_data: Path, precision: str) -> None:
    fp32, low = _trainer(tiny_model_dir, CUDA, "fp32"), _trainer(tiny_model_dir, CUDA, precision)
    assert (low.scaler is not None) == (precision == "fp16"), "loss scaling for fp16 only"
    a, b = _losses(fp32, small_chat_data), _losses(low, small_chat_data)
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-2)
    assert sum(m.get("skipped", 0.0) for m in b) <= 1
    assert {p.dtype for p in low.model.parameters() if p.requires_grad} == {torch.float32}, "adapters stay fp32"


def test_lorakit_train_eval_and_generate_run_on_the_gpu(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(tmp_path / "run"),
                                 **SETTINGS)  # type: ignore[arg-type]  # fmt: skip
    result = train_run(config, progress=False)
    summary = json.loads((result.output / "train_summary.json").read_text())
    assert summary["device"].startswith("cuda")
    rows = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_gpu_mb"] > 0 for r in rows if r["kind"] == "train")
    common = ["--model", str(tiny_model_dir), "--adapter", str(result.output), "--device", CUDA]
    assert cli_main(["eval", "--task", "loss", "--data", str(small_chat_data), *common]) == 0
    assert cli_main(["generate", "--prompt", "hi", "--max-new-tokens", "4", *common]) == 0
    assert "running on cuda" in capsys.readouterr().err


def test_qlora_on_the_gpu_quantises_on_the_device_and_trains(tiny_model_dir: Path, small_chat_data: Path) -> None:
    on_cpu, _ = load_model(str(tiny_model_dir), quantize="nf4")
    on_gpu, _ = load_model(str(tiny_model_dir), quantize="nf4", device=CUDA)
    cpu_layers, gpu_layers = quantized_modules(on_cpu), quantized_modules(on_gpu)
    assert gpu_layers.keys() == cpu_layers.keys() and gpu_layers
    for name, layer in gpu_layers.items():
        assert layer.weight.device.type == "cuda"
        values, expected = dequantize(layer.weight).cpu(), dequantize(cpu_layers[name].weight)
        assert float((values != expected).float().mean()) < 1e-3, f"{name}: the codes and scales the CPU computes"
    config = lorakit.TrainConfig(**{**SETTINGS, "method": "qlora", "precision": "auto"})  # type: ignore[arg-type]
    trainer = lorakit.Trainer(on_gpu, AutoTokenizer.from_pretrained(tiny_model_dir), config)
    losses = [m["loss"] for m in _losses(trainer, small_chat_data)]
    assert len(losses) == 4 and all(0 < v < 20 for v in losses)


def test_a_quantised_model_never_holds_its_float_weights_on_the_gpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Quantised one weight at a time on the GPU: its peak is the NF4 model plus one weight's quantisation scratch
    (torchao compares every value with the 16 codes: ~40 bytes per value of the largest weight), far below the bf16
    model. Many small layers, so the bf16 model is large next to one weight."""
    folder = tmp_path / "deep"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=32,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    bf16, _ = load_model(str(folder), dtype="bf16", device=CUDA)
    bf16_bytes = torch.cuda.memory_allocated() - start
    del bf16
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    nf4, _ = load_model(str(folder), quantize="nf4", device=CUDA)
    held = torch.cuda.memory_allocated() - start
    peak = torch.cuda.max_memory_allocated() - start
    assert held == pytest.approx(sum(quantized_bytes(p) for p in nf4.parameters()), rel=0.1)
    assert held < 0.4 * bf16_bytes, "Linear weights at ~4.1 bits instead of 16"
    assert peak < 0.6 * bf16_bytes, "quantised one weight at a time: the bf16 model never sat on the GPU"


def test_nf4_base_against_bitsandbytes() -> None:
    """lorakit's NF4 (torchao's codes, QLoRA's table, blocks of 64, double-quantised scales) against bitsandbytes',
    the CUDA reference: the same error on a weight, the same storage, and logits as close to the bf16 model's."""
    bnb_functional = pytest.importorskip("bitsandbytes.functional", reason="needs bitsandbytes (not a dependency)")
    from lorakit.quant.backends import quantize_weight

    torch.manual_seed(0)
    weight = (torch.randn(2048, 2048) * 0.02).to(CUDA, torch.bfloat16)
    ours = quantize_weight(weight, "nf4")
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    theirs = bnb_functional.dequantize_4bit(packed, state)
    error_ours = float((dequantize(ours).float() - weight.float()).norm() / weight.float().norm())
    error_theirs = float((theirs.float() - weight.float()).norm() / weight.float().norm())
    assert error_ours < 1.1 * error_theirs, (error_ours, error_theirs)
    state2 = getattr(state, "state2", None)
    bnb_bytes = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if state2 is not None:
        bnb_bytes += state2.absmax.numel() * state2.absmax.element_size() + state2.code.numel() * 4
    assert quantized_bytes(ours) < 1.1 * bnb_bytes, (quantized_bytes(ours), bnb_bytes)

    model = tiny_llama().to(CUDA, torch.bfloat16)
    ids = torch.randint(0, 97, (2, 16), device=CUDA)
    with torch.no_grad():
        reference = model(ids).logits.float()
        ours_model = _copy(model)
        assert quantize_model(ours_model, "nf4")
        ours_logits = ours_model(ids).logits.float()
    assert ours_logits.isfinite().all()
    theirs_model = _copy(model)
    with torch.no_grad():
        for module in theirs_model.modules():
            if type(module) is torch.nn.Linear and module is not theirs_model.lm_head:
                p, s = bnb_functional.quantize_4bit(module.weight, blocksize=64, compress_statistics=True,
                                                    quant_type="nf4")  # fmt: skip
                module.weight.copy_(bnb_functional.dequantize_4bit(p, s))
        theirs_logits = theirs_model(ids).logits.float()
    gap_ours, gap_theirs = (ours_logits - reference).abs().mean(), (theirs_logits - reference).abs().mean()
    assert gap_ours < 1.5 * gap_theirs, (float(gap_ours), float(gap_theirs))


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def test_mixed_adapter_batch_on_the_gpu() -> None:
    model = tiny_llama()
    for seed, name in enumerate(("a", "b"), start=1):
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), name)
        randomize_lora_b(model, seed)
    model = model.to(CUDA).eval()
    rows = ["a", "b", None]
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(3)).to(CUDA)
    with torch.no_grad():
        with lorakit.row_adapters(model, rows):
            mixed = model(ids).logits
        alone = []
        for i, name in enumerate(rows):
            if name is None:
                with lorakit.disable_adapters(model):
                    alone.append(model(ids[i : i + 1]).logits)
            else:
                lorakit.set_adapters(model, [name])
                alone.append(model(ids[i : i + 1]).logits)
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-4, atol=1e-4)


def test_the_server_engine_on_the_gpu_answers_as_generate_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lorakit.eval.generate import generate_batch, prompt_ids
    from lorakit.serve.engine import Request, Sampling
    from lorakit.serve.server import build_state

    model, tokenizer = load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    randomize_lora_b(model, 1)
    lorakit.save_adapter(model, tmp_path / "ad")
    state = build_state(str(tiny_model_dir), {"ad": tmp_path / "ad"}, None, max_batch=4, max_new_tokens=8,
                        dtype="fp32", device=CUDA)  # fmt: skip
    try:
        assert next(state.engine.model.parameters()).device.type == "cuda"
        prompt = prompt_ids(tokenizer, [{"role": "user", "content": "Say something."}])
        replies: dict[str | None, str] = {}
        done = threading.Semaphore(0)

        def emit_for(adapter: str | None) -> Any:
            def emit(event: Any) -> None:
                replies[adapter] = replies.get(adapter, "") + event.text
                if event.finish_reason or event.error:
                    assert event.error is None, event.error
                    done.release()

            return emit

        for adapter in (None, "ad"):
            state.engine.submit(Request(prompt, adapter, Sampling(max_tokens=8), emit_for(adapter)))
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
    finally:
        state.engine.close()
    base, _ = load_model(str(tiny_model_dir), device=CUDA)
    expected_base = generate_batch(base, tokenizer, [prompt], 8)[0]
    tuned, _ = load_model(str(tiny_model_dir), device=CUDA)
    lorakit.load_adapter(tuned, tmp_path / "ad")
    expected_tuned = generate_batch(tuned, tokenizer, [prompt], 8)[0]
    assert replies[None] == expected_base and replies["ad"] == expected_tuned
