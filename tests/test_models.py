"""The real built-in model: loading, its cache, and adapters that peft reads the same way."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import peft
import pytest
import torch

import lorakit
from lorakit import models
from lorakit.models import builtin_gguf, builtin_model_dir, load_tokenizer
from tests.tiny import randomize_lora_b, tiny_llama

pytestmark = pytest.mark.integration


def test_builtin_model_answers_a_question(smollm2) -> None:
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply


def test_load_tokenizer_gives_the_tokenizer_of_load_model(
    smollm2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the weights, from the converted copy and from the GGUF file alone: the tokenizer load_model gives."""
    expected = smollm2[1]
    from_cache = load_tokenizer()  # the fixture's load_model converted the built-in model, if nothing had before
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    from_gguf = load_tokenizer()
    assert list(tmp_path.iterdir()) == [], "nothing converted, no cache written"
    system = {"role": "system", "content": "You answer in one word."}
    user = {"role": "user", "content": "What colour is the sky?"}
    chats = [([system, user, {"role": "assistant", "content": "Blue."}], False), ([user], True)]
    rendered = [expected.apply_chat_template(c, tokenize=False, add_generation_prompt=p) for c, p in chats]
    assert rendered[1].endswith("<|im_start|>assistant\n")
    texts = ["Hello world", "  café\n\nnaïve 123 <|im_end|> x", "def f(x):\n\treturn x**2", '{"name": "Ada"}']
    for tokenizer in (from_cache, from_gguf):
        assert type(tokenizer) is type(expected) and len(tokenizer) == len(expected)
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (2, 2, 1)
        assert (expected.pad_token_id, expected.eos_token_id, expected.bos_token_id) == (2, 2, 1)
        assert [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=p) for c, p in chats] == rendered
        for text in texts + rendered:
            ids = expected(text)["input_ids"]
            assert tokenizer(text)["input_ids"] == ids
            assert tokenizer.decode(ids) == expected.decode(ids)


def test_adapter_round_trip_with_peft_on_builtin_model(smollm2, tmp_path: Path) -> None:
    base = smollm2[0]
    x = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198]])
    config = dict(r=8, lora_alpha=16, target_modules="all-linear")
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**config))
    theirs_fresh = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    assert lorakit.count_parameters(ours) == theirs_fresh.get_nb_trainable_parameters()
    randomize_lora_b(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        expected, got, plain = theirs(x).logits, ours(x).logits, base(x).logits
    assert (expected - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # merged = unmerged = unloaded on the real model; merging re-associates fp32 sums through 30 layers, so
    # logits of magnitude ~30 agree to ~1e-5 relative rather than bit for bit
    lorakit.merge_adapters(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, expected, atol=1e-3, rtol=1e-5)
        unloaded = lorakit.unload(ours)(x).logits
    torch.testing.assert_close(unloaded, expected, atol=1e-3, rtol=1e-5)
    del ours, theirs, theirs_fresh

    # peft writes (random A and B), lorakit reads
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config, init_lora_weights=False)).eval()
    theirs.save_pretrained(tmp_path / "peft")
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    with torch.no_grad():
        expected = theirs(x).logits
        assert (expected - plain).abs().max() > 1e-2
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=0)


def test_missing_model_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(lorakit.ModelError, match="no such model folder"):
        lorakit.load_model(str(tmp_path / "nope"))
    with pytest.raises(lorakit.ModelError, match="no such GGUF file"):
        lorakit.load_model(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(lorakit.ModelError, match="no config.json"):
        lorakit.load_model(str(tmp_path / "empty"))


def test_concurrent_conversions_leave_one_whole_cache(
    smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first uses at once into an empty LORAKIT_HOME, both inside the conversion before either writes (a tiny
    model stands in for the de-quantised one): both get the one cache, whole, and no temporary folder is left.
    The slow test below races the real GGUF conversion in two processes."""
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    converted, both_converting = tiny_llama(), threading.Barrier(2, timeout=60)

    def convert(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        assert path == builtin_gguf() and dtype == torch.float32
        both_converting.wait()
        return converted, smollm2_tokenizer

    renames: list[str] = []
    real_rename = os.rename

    def rename(source: Path, destination: Path) -> None:
        try:
            real_rename(source, destination)
        except OSError:
            renames.append("lost")
            raise
        renames.append("won")

    monkeypatch.setattr(models, "_load_gguf", convert)
    monkeypatch.setattr(os, "rename", rename)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: builtin_model_dir(), range(2)))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert outs == [target] * 2
    assert sorted(renames) == ["lost", "won"], "both converted; the second copy was discarded"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name], "no temporary folder left"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    cached = lorakit.load_model()[0].state_dict()
    assert all(torch.equal(cached[k], v) for k, v in converted.state_dict().items())


@pytest.mark.slow
def test_concurrent_first_use_builds_one_whole_cache(tmp_path: Path) -> None:
    """Two processes convert the GGUF file at once into an empty LORAKIT_HOME; both end with a good cache.

    Slow (two real de-quantisations, ~20 s on 2 cores); the test above races the same code in one process."""
    env = {**os.environ, "LORAKIT_HOME": str(tmp_path)}
    code = "import lorakit.models as m; print(m.builtin_model_dir())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert outs == [str(target)] * 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [target.name], "no temporary folder left"
    cached = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= cached
    assert builtin_model_dir().exists()
