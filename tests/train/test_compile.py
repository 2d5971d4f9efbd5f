"""``TrainConfig(compile=True)``: the decoder layers' compiled forward against the plain eager path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import lorakit
from lorakit.models import decoder_layers
from lorakit.train.compile import CompiledLayers, cpp_compiler
from lorakit.train.config import TrainConfig
from lorakit.train.trainer import Trainer

needs_cxx = pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on a CPU needs a C++ compiler (g++)")


def _text_records(data: Path) -> list[dict[str, str]]:
    """Plain-text records (a loss on every token, no prompt shared by the rows: no layer call with a KV cache)
    of varied lengths, so the batches have several lengths."""
    records = [json.loads(line) for line in data.read_text().splitlines()]
    return [{"text": r["messages"][1]["content"] + "\n" + r["messages"][2]["content"]} for r in records]


def _losses(model_dir: Path, records: list[dict[str, str]], compile: bool) -> tuple[list[float], Trainer, int]:
    model, tokenizer = lorakit.load_model(str(model_dir))
    config = TrainConfig(max_steps=20, batch_size=4, lr=3e-2, warmup_steps=2, seq_len=256, r=4, lora_alpha=8,
                         precision="bf16", compile=compile)  # fmt: skip
    trainer = Trainer(model, tokenizer, config)
    calls = [0]
    if trainer.compiled is not None:  # count the calls that reach the compiled function
        for kind, compiled in trainer.compiled.compiled.items():

            def counting(*args: Any, _compiled: Any = compiled, **kwargs: Any) -> Any:
                calls[0] += 1
                return _compiled(*args, **kwargs)

            trainer.compiled.compiled[kind] = counting
    losses: list[float] = []
    trainer.fit(records, on_step=lambda _, metrics: losses.append(metrics["loss"]), progress=False)
    return losses, trainer, calls[0]


# Compiling the layer takes 30-60 s on this 2-core machine (tracing, Inductor, g++), on a tiny model as on a large one.
@pytest.mark.slow
@needs_cxx
def test_compiled_steps_track_the_plain_path_over_20_steps(tiny_model_dir: Path, small_chat_data: Path) -> None:
    from torch._dynamo.utils import counters

    records = _text_records(small_chat_data)
    plain, _, _ = _losses(tiny_model_dir, records, compile=False)
    graphs = counters["stats"]["unique_graphs"]
    fast, trainer, calls = _losses(tiny_model_dir, records, compile=True)
    assert len(plain) == len(fast) == 20
    assert calls == 20 * 2, "every step ran both decoder layers compiled"
    lengths = {len(b["input_ids"][0]) for b in (trainer.batches(trainer.tokenize(records))[m] for m in range(20))}
    assert len(lengths) > 3, "the run meets several batch lengths"
    # one graph for the layer (forward and backward), compiled for symbolic lengths: not one per length or layer
    assert counters["stats"]["unique_graphs"] - graphs <= 2
    learned, learned_fast = plain[0] - min(plain), fast[0] - min(fast)
    assert learned > 0.05, "the reference run learns (batches of different texts: the loss varies by batch)"
    # as the bf16 fast path against fp32 (test_fast_path.py): step by step within bf16's unit roundoff
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=2**-8, atol=0.0)
    assert abs(learned_fast - learned) < 0.25 * learned, "the compiled path learns as much as the plain one"


@needs_cxx
def test_layers_run_their_own_forward_outside_the_steps(tiny_model_dir: Path) -> None:
    model, _ = lorakit.load_model(str(tiny_model_dir))
    layers = decoder_layers(model)
    assert len(layers) == 2 and all(type(layer).__name__ == "LlamaDecoderLayer" for layer in layers)
    compiled = CompiledLayers(model)
    with compiled.active():
        assert all("forward" in vars(layer) for layer in layers)
    assert not any("forward" in vars(layer) for layer in layers), "the class's forward again, nothing left behind"
    assert len(compiled.compiled) == 1, "one compiled function for the layer class"


def test_a_model_without_known_decoder_layers_is_refused() -> None:
    with pytest.raises(lorakit.LorakitError, match="--compile: cannot find the decoder layers of Sequential"):
        CompiledLayers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_missing_cpp_compiler_is_a_clear_error(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    model, _ = lorakit.load_model(str(tiny_model_dir))
    with pytest.raises(lorakit.LorakitError, match=r"needs a C\+\+ compiler \(no-such-compiler-xyz"):
        Trainer(model, None, TrainConfig(compile=True, max_steps=1))
