"""GGUF exports checked by llama.cpp itself (llama-cpp-python 0.3.36 built from source) and by llama.cpp's own
converter (``convert_lora_to_gguf.py`` from the same source distribution).

Run with ``make test-llamacpp`` (``-m llamacpp``); ``-rP`` shows the measured differences these tests print.
``LORAKIT_TRAINED_ADAPTER``: an adapter trained on the built-in model to use instead of training one here
(the demo's `lorakit train` defaults, 240 steps: about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.data.jsonl import read_jsonl
from lorakit.eval.generate import prompt_ids
from lorakit.models import builtin_gguf
from lorakit.tasks.contacts import builtin_path, reference_of
from lorakit.tasks.contacts_metrics import score_all
from tests.tiny import randomize_lora_b, tiny_llama

pytestmark = pytest.mark.llamacpp

SDIST = Path(
    os.environ.get("LORAKIT_LLAMA_CPP_SDIST")
    or Path.home() / ".cache" / "lorakit-wheels" / "llama_cpp_python-0.3.36.tar.gz"
)
CONVERTER_PARTS = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")
# LORAKIT_LLAMA_THREADS=1 on a shared machine: llama.cpp's threads spin-wait for each other, and a busy machine
# then takes minutes per reply.
THREADS = int(os.environ.get("LORAKIT_LLAMA_THREADS", min(4, os.cpu_count() or 1)))
# float32 llama.cpp (float32 KV cache) against float32 torch on the built-in model measured 1.4e-4 at most.
F32_LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="session")
def llama_cpp() -> Iterator[Any]:
    """llama-cpp-python, with llama.cpp's extra CPU buffer types (weight repacking) off, as llama-cli's --no-repack.

    On a CPU with AMX, llama.cpp 0.3.36 (this build) repacks the Q4_1 weights into its AMX buffers and then crashes
    (SIGSEGV in llama_decode) on the built-in Q4_1 file, with or without an adapter and with llama.cpp's own
    converter's adapter as well ("lora for 'blk.9.ffn_up.weight' cannot use buft 'AMX'"); without repacking both
    run, and give the same logits. The crash is llama.cpp's, not the exported file's; docs/export.md says so."""
    try:
        import llama_cpp
        import llama_cpp.llama as llama_module
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: `make test-llamacpp` builds and installs it")
    default_params = llama_module.llama_cpp.llama_model_default_params

    def no_repacking() -> Any:
        params = default_params()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_module.llama_cpp, "llama_model_default_params", no_repacking)
        yield llama_cpp


@pytest.fixture(scope="session")
def converter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's converter scripts, unpacked from llama-cpp-python's source distribution."""
    if not SDIST.is_file():
        pytest.fail(f"{SDIST}: llama-cpp-python's source distribution is missing (`make test-llamacpp` fetches it)")
    folder = tmp_path_factory.mktemp("llama.cpp")
    prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(tuple(prefix + p for p in CONVERTER_PARTS))]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        tar.extractall(folder, members=members, filter="data")
    return folder


def convert_lora(converter: Path, adapter: Path, base: Path, out: Path, outtype: str) -> gguf.GGUFReader:
    subprocess.run(
        [sys.executable, "convert_lora_to_gguf.py", "--base", str(base), "--outtype", outtype, "--outfile", str(out),
         str(adapter)],
        cwd=converter, check=True, capture_output=True,
    )  # fmt: skip
    return gguf.GGUFReader(out)


def export(adapter: Path, out: Path, *extra: str) -> Path:
    assert main(["export", "--adapter", str(adapter), "--output", str(out), *extra]) == 0
    return out


def llama_cpp_logits(llama_cpp: Any, model: Path, tokens: list[int], lora: Path | None = None) -> np.ndarray:
    """llama.cpp's logits for every position of ``tokens`` (float64 copy, (T, vocab)).

    The KV cache is kept in float32 (llama.cpp's default is f16, which alone moves the built-in model's logits by up
    to 2.7e-2): these tests measure the exported file, not the cache's precision."""
    f32 = 0  # GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=512, n_batch=512,
                          n_threads=THREADS, logits_all=True, verbose=False, type_k=f32, type_v=f32,
                          flash_attn=False)  # fmt: skip
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def torch_logits(model: Any, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


# ---------------------------------------------------------------- the tensors equal llama.cpp's converter's


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_tensors_equal_llama_cpps_converter_on_a_tiny_llama(outtype: str, converter: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj", "lm_head"]))  # fmt: skip
    randomize_lora_b(model)
    adapter = lorakit.save_adapter(model, tmp_path / "adapter")
    theirs = convert_lora(converter, adapter, base, tmp_path / "theirs.gguf", outtype)
    dtype = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "q8_0": "q8_0"}[outtype]
    ours = gguf.GGUFReader(export(adapter, tmp_path / "ours.gguf", "--model", str(base), "--dtype", dtype))
    _assert_same_tensors(ours, theirs)
    assert ours.fields["adapter.lora.alpha"].contents() == theirs.fields["adapter.lora.alpha"].contents() == 8.0


def test_tensors_equal_llama_cpps_converter_on_the_builtin_model(trained_adapter, converter, tmp_path) -> None:
    """The trained adapter against the built-in model's config.json (the converter needs it given by hand)."""
    from lorakit.models import builtin_model_dir

    theirs = convert_lora(converter, trained_adapter, builtin_model_dir(), tmp_path / "theirs.gguf", "f32")
    ours = gguf.GGUFReader(export(trained_adapter, tmp_path / "ours.gguf"))
    _assert_same_tensors(ours, theirs)
    print(f"\nbuilt-in adapter: {len(ours.tensors)} tensors identical to convert_lora_to_gguf.py's")


def test_rslora_alpha_is_where_the_converter_is_wrong(converter: Path, tmp_path: Path) -> None:
    """Same tensors, but the converter writes lora_alpha as is: under rsLoRA llama.cpp would then scale by
    alpha / r instead of alpha / sqrt(r). lorakit writes the equivalent alpha * sqrt(r)."""
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                                                                 target_modules=["q_proj"]))  # fmt: skip
    randomize_lora_b(model)
    adapter = lorakit.save_adapter(model, tmp_path / "adapter")
    theirs = convert_lora(converter, adapter, base, tmp_path / "theirs.gguf", "f32")
    ours = gguf.GGUFReader(export(adapter, tmp_path / "ours.gguf", "--model", str(base)))
    _assert_same_tensors(ours, theirs)
    assert theirs.fields["adapter.lora.alpha"].contents() == 8.0
    assert ours.fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)  # 8 * sqrt(4)


def _assert_same_tensors(ours: gguf.GGUFReader, theirs: gguf.GGUFReader) -> None:
    mine = {t.name: t for t in ours.tensors}
    assert set(mine) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        assert mine[t.name].tensor_type == t.tensor_type, t.name
        assert mine[t.name].shape.tolist() == t.shape.tolist(), t.name
        assert np.array_equal(np.asarray(mine[t.name].data), np.asarray(t.data)), t.name
    for key in ("general.architecture", "general.type", "adapter.type"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key


# ---------------------------------------------------------------- llama.cpp's logits equal lorakit's


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("LORAKIT_TRAINED_ADAPTER")
    if given:
        return Path(given)
    # The demo's adapter (lorakit train's defaults on the built-in task, 240 steps, ~7 min on 2 cores). A 60-step
    # adapter is too unsure of its answers for the greedy comparison: Q4_1's rounding flipped 23 of 100 replies
    # (exact_match 0.34 in lorakit, 0.40 in llama.cpp), where the demo's adapter gives 0.81 on both sides.
    out = tmp_path_factory.mktemp("trained") / "run"
    subprocess.run([sys.executable, "-m", "lorakit", "train", "--output", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def builtin_f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in model as a float32 GGUF (a zero adapter merged into it), to measure llama.cpp's float32 error."""
    folder = tmp_path_factory.mktemp("builtin-f32")
    model, _ = lorakit.load_model()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=1, target_modules=["q_proj"]))
    adapter = lorakit.save_adapter(model, folder / "zero")
    return export(adapter, folder / "base-f32.gguf", "--merge", "--dtype", "fp32")


@pytest.fixture(scope="session")
def pattern_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random adapter on the built-in model that needs everything the LoRA export does: q/k permutation, rsLoRA's
    equivalent alpha, and rank/alpha patterns folded into B."""
    model, _ = lorakit.load_model()
    torch.manual_seed(0)  # A's init
    config = lorakit.LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear",
                                rank_pattern={"v_proj": 4, "layers.3.mlp.down_proj": 16},
                                alpha_pattern={"o_proj": 4.0, "layers.7.self_attn.q_proj": 40.0})  # fmt: skip
    lorakit.add_adapter(model, config)
    randomize_lora_b(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.02)  # a clear change of the logits that keeps the model coherent
    return lorakit.save_adapter(model, tmp_path_factory.mktemp("pattern") / "adapter")


@pytest.fixture(scope="session")
def prompt(builtin: tuple[Any, Any]) -> list[int]:
    tokenizer = builtin[1]
    record = read_jsonl(str(builtin_path("eval")))[0]
    return [*prompt_ids(tokenizer, record["messages"]), tokenizer.encode("{", add_special_tokens=False)[0]]


@pytest.fixture(scope="session")
def builtin() -> tuple[Any, Any]:
    """The built-in model and tokenizer, loaded once; tests leave the model as they found it."""
    return lorakit.load_model()


@pytest.fixture(scope="session")
def reference(builtin: tuple[Any, Any]) -> Any:
    """lorakit's float32 logits of the built-in model, with an adapter (unmerged: the adapter's own forward)."""
    builtin_model = builtin[0]

    def logits(adapter: Path | None, tokens: list[int]) -> np.ndarray:
        if adapter is None:
            return torch_logits(builtin_model, tokens)
        lorakit.load_adapter(builtin_model, adapter, name="probe")
        try:
            return torch_logits(builtin_model, tokens)
        finally:
            lorakit.delete_adapter(builtin_model, "probe")

    return logits


def _report(label: str, got: np.ndarray, want: np.ndarray, effect: np.ndarray | None = None) -> float:
    diff = float(np.abs(got - want).max())
    argmax = float((got.argmax(-1) == want.argmax(-1)).mean())
    extra = f", adapter's own effect max |Δ| {float(np.abs(effect).max()):.3f}" if effect is not None else ""
    print(f"\n{label}: max |Δlogit| {diff:.2e}, mean {float(np.abs(got - want).mean()):.2e}, "
          f"argmax agreement {argmax:.3f}{extra}")  # fmt: skip
    return diff


@pytest.mark.parametrize("which", ["pattern", "trained"])
def test_lora_gguf_on_f32_base_gives_lorakits_logits(
    which, request, llama_cpp, builtin_f32_gguf, prompt, reference, tmp_path
):
    adapter = request.getfixturevalue(f"{which}_adapter")
    lora = export(adapter, tmp_path / "adapter.gguf")
    want, base = reference(adapter, prompt), reference(None, prompt)
    floor = _report("f32 base GGUF alone vs lorakit base", llama_cpp_logits(llama_cpp, builtin_f32_gguf, prompt), base)
    got = llama_cpp_logits(llama_cpp, builtin_f32_gguf, prompt, lora)
    diff = _report(f"f32 base GGUF + {which} LoRA GGUF vs lorakit (unmerged)", got, want, want - base)
    assert floor < F32_LOGIT_TOLERANCE
    assert diff < F32_LOGIT_TOLERANCE
    assert np.abs(want - base).max() > 100 * F32_LOGIT_TOLERANCE  # the adapter's effect dwarfs the tolerance


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "q8_0"])
def test_lora_gguf_dtypes_on_f32_base(dtype, llama_cpp, builtin_f32_gguf, pattern_adapter, prompt, reference, tmp_path):
    """Lower-precision LoRA files: llama.cpp loads and applies them, within their rounding."""
    lora = export(pattern_adapter, tmp_path / "adapter.gguf", "--dtype", dtype)
    want, base = reference(pattern_adapter, prompt), reference(None, prompt)
    diff = _report(f"f32 base + {dtype} LoRA vs lorakit", llama_cpp_logits(llama_cpp, builtin_f32_gguf, prompt, lora),
                   want, want - base)  # fmt: skip
    assert diff < 0.05 * np.abs(want - base).max()


def test_lora_gguf_on_the_q4_1_original(llama_cpp, trained_adapter, prompt, reference, tmp_path: Path) -> None:
    """On the built-in Q4_1 file the adapter meets the weights it was trained on, but llama.cpp's Q4_1 kernels round
    the activations to 8 bits: the difference is that of the base alone, not the adapter's."""
    lora = export(trained_adapter, tmp_path / "adapter.gguf")
    want, base = reference(trained_adapter, prompt), reference(None, prompt)
    q4_base = llama_cpp_logits(llama_cpp, builtin_gguf(), prompt)
    floor = _report("Q4_1 original alone vs lorakit base", q4_base, base)
    got = llama_cpp_logits(llama_cpp, builtin_gguf(), prompt, lora)
    diff = _report("Q4_1 original + LoRA GGUF vs lorakit (unmerged)", got, want, want - base)
    assert diff < 2 * floor + F32_LOGIT_TOLERANCE

    def agreement(a: np.ndarray, b: np.ndarray) -> float:
        return float((a.argmax(-1) == b.argmax(-1)).mean())

    # Q4_1's rounding alone flips some greedy tokens (0.951 of positions agree for the base): the adapter may add a
    # few flips of its own rounding (0.931 with the demo's adapter, 2 of 102 positions more), not the adapter's
    # effect, which without the LoRA file leaves far fewer positions agreeing.
    assert agreement(got, want) > agreement(q4_base, base) - 0.05
    assert agreement(q4_base, want) < agreement(got, want) - 0.2, "the LoRA file changes llama.cpp's greedy tokens"


def test_merged_gguf_gives_lorakits_logits(llama_cpp, pattern_adapter, prompt, reference, tmp_path: Path) -> None:
    merged = export(pattern_adapter, tmp_path / "merged.gguf", "--merge", "--dtype", "fp32")
    want, base = reference(pattern_adapter, prompt), reference(None, prompt)
    diff = _report("merged f32 GGUF vs lorakit (unmerged)", llama_cpp_logits(llama_cpp, merged, prompt), want,
                   want - base)  # fmt: skip
    assert diff < F32_LOGIT_TOLERANCE


def test_merged_gguf_from_a_transformers_folder_tokenizes_and_computes_as_transformers(
    llama_cpp, tiny_model_dir: Path, smollm2_tokenizer, tmp_path: Path
) -> None:
    """A base without a GGUF file: lorakit writes the tokenizer from tokenizer.json; llama.cpp splits text into the
    same ids as the transformers tokenizer and computes the same logits."""
    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"))
    randomize_lora_b(model)
    adapter = lorakit.save_adapter(model, tmp_path / "adapter")
    merged = export(adapter, tmp_path / "tiny.gguf", "--merge", "--dtype", "fp32", "--model", str(tiny_model_dir))
    llm = llama_cpp.Llama(model_path=str(merged), n_ctx=256, n_threads=THREADS, verbose=False, vocab_only=True)
    texts = [
        "Call Zoë at +44 20 7946 0958 or zoe.o'neil@example.co.uk before 5pm!",
        "<|im_start|>user\nÉlan Cosmetics ApS, Lagos\n\n  tabs\tand   spaces<|im_end|>\n",
        "12345 x 3.14159",
    ]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == smollm2_tokenizer.encode(text), text
    llm.close()
    tokens = smollm2_tokenizer.encode(texts[1])
    got, want = llama_cpp_logits(llama_cpp, merged, tokens), torch_logits(model, tokens)
    _report("tiny merged GGUF vs transformers", got, want)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_llama3_rope_scaling_runs_as_in_transformers(llama_cpp, tiny_model_dir: Path, tmp_path: Path) -> None:
    """rope_freqs.weight carries Llama 3's rope scaling: positions far apart agree with transformers."""
    from transformers import AutoModelForCausalLM

    base = tmp_path / "llama3"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    (base / "config.json").write_text(json.dumps(config))
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    lorakit.add_adapter(plain, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = lorakit.save_adapter(plain, tmp_path / "adapter")
    merged = export(adapter, tmp_path / "llama3.gguf", "--merge", "--dtype", "fp32", "--model", str(base))
    tokens = list(range(100, 400))  # 300 positions, well past the original 64
    reference = torch_logits(AutoModelForCausalLM.from_pretrained(base).eval(), tokens)
    _report("tiny llama3-rope merged GGUF vs transformers", llama_cpp_logits(llama_cpp, merged, tokens), reference)
    np.testing.assert_allclose(llama_cpp_logits(llama_cpp, merged, tokens), reference, atol=1e-4)


def test_why_tied_embeddings_are_refused(tmp_path: Path) -> None:
    """The refusal guards against this: an embedding update for a model whose head is tied to the embedding makes
    llama.cpp abort (it runs the head through the embedding's tensor, so it applies the transposed update there too).
    If a llama.cpp release stops aborting, this test fails and the refusal can be revisited."""
    import dataclasses

    from lorakit.export.gguf_layout import LlamaLayout
    from lorakit.export.gguf_lora import lora_gguf_tensors, write_lora_gguf
    from lorakit.io import read_adapter_config, read_adapter_weights
    from lorakit.models import builtin_model_dir

    model, _ = lorakit.load_model()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["embed_tokens"]))
    folder = lorakit.save_adapter(model, tmp_path / "adapter")
    config = json.loads((builtin_model_dir() / "config.json").read_text())
    untied = dataclasses.replace(LlamaLayout.from_config(config, "built-in"), tied=False)  # around the refusal
    alpha, tensors = lora_gguf_tensors(read_adapter_config(folder), read_adapter_weights(folder), untied, "test")
    write_lora_gguf(tmp_path / "embed.gguf", alpha, tensors, "fp32")
    script = (
        "import llama_cpp, sys; llm = llama_cpp.Llama(model_path=sys.argv[1], lora_path=sys.argv[2], n_ctx=64, "
        "verbose=False); llm.create_completion('Hello', max_tokens=2)"
    )
    run = subprocess.run([sys.executable, "-c", script, str(builtin_gguf()), str(tmp_path / "embed.gguf")],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode != 0 and "GGML_ASSERT(ggml_can_mul_mat(a, b))" in run.stderr


# ---------------------------------------------------------------- greedy answers agree with lorakit eval


def _llama_cpp_replies(llama_cpp: Any, lora: Path, records: list[dict[str, Any]], max_tokens: int) -> Iterator[str]:
    llm = llama_cpp.Llama(model_path=str(builtin_gguf()), lora_path=str(lora), n_ctx=1024, n_threads=THREADS,
                          verbose=False)  # fmt: skip
    try:
        for record in records:
            out = llm.create_chat_completion(messages=record["messages"][:-1], temperature=0.0, max_tokens=max_tokens)
            yield out["choices"][0]["message"]["content"] or ""
    finally:
        llm.close()


def test_greedy_answers_on_the_q4_1_base_score_as_lorakit_eval(llama_cpp, trained_adapter, tmp_path: Path) -> None:
    """100 held-out contacts messages: llama.cpp with the exported LoRA on the built-in Q4_1 file against
    ``lorakit eval`` of the same adapter; exact_match within 0.02."""
    out = tmp_path / "m.json"
    assert main(["eval", "--adapter", str(trained_adapter), "--limit", "100", "--no-base", "--output", str(out)]) == 0
    ours = json.loads(out.read_text())  # --no-base: the adapter's run alone, flat
    records = read_jsonl(str(builtin_path("eval")))[:100]
    _, tokenizer = lorakit.load_model()
    longest = max(len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in records)
    lora = export(trained_adapter, tmp_path / "adapter.gguf")
    replies = list(_llama_cpp_replies(llama_cpp, lora, records, longest + 16))
    theirs = score_all(replies, [reference_of(r) for r in records])
    keys = ("json_valid", "exact_match", "field_accuracy")
    print(f"\nlorakit eval:            {json.dumps({k: ours[k] for k in keys})}")
    print(f"llama.cpp, Q4_1 + LoRA:  {json.dumps({k: theirs[k] for k in keys})}")
    differing = [(i, p["reply"], replies[i]) for i, p in enumerate(ours["predictions"]) if p["reply"] != replies[i]]
    print(f"{len(differing)} of 100 replies differ")
    for i, mine, other in differing:
        print(f"  #{i}: lorakit {mine!r}\n       llama.cpp {other!r}")
    assert abs(theirs["exact_match"] - ours["exact_match"]) <= 0.02
