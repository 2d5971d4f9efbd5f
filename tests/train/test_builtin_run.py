"""A short real run on the built-in SmolLM2-135M: the whole path, a few steps, then the adapter in use."""

from __future__ import annotations

import copy
import json
import resource
from pathlib import Path

import peft
import pytest
import torch

import lorakit
from lorakit.runs import RunConfig, train_run
from lorakit.tasks.contacts_eval import evaluate_contacts

pytestmark = pytest.mark.integration


def test_short_training_run_on_the_builtin_model(smollm2, tmp_path: Path) -> None:
    config = RunConfig(output=str(tmp_path / "run"), max_steps=3, batch_size=4, warmup_steps=1)
    result = train_run(config, progress=False)
    records = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in records)
    peaks = [r["peak_rss_mb"] for r in records]  # the high-water mark so far: never falls, never above the end's
    assert peaks == sorted(peaks) and peaks[0] > 0
    assert peaks[-1] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 0.05  # logged to 0.1 MiB
    config = json.loads((result.output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and config["r"] == 16

    base = smollm2[0]
    model = lorakit.load_adapter(copy.deepcopy(base), result.output)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), result.output)
    x = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2, 198]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, theirs(x).logits, atol=1e-5, rtol=0)
        assert (model(x).logits - base(x).logits).abs().max() > 1e-3, "three steps moved the adapter"
    metrics = evaluate_contacts(model, smollm2[1], limit=4, batch_size=4, progress=False)
    assert metrics["n"] == 4 and len(metrics["predictions"]) == 4
