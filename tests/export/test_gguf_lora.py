"""``lorakit export --format gguf``: the LoRA file's names, metadata and numbers, read back with the ``gguf`` package
and checked against float64 hand computations and llama.cpp's own tensor-name table (no llama.cpp needed)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.torch import load_file

import lorakit
from lorakit.cli import main
from lorakit.export.gguf_layout import gguf_name
from lorakit.export.gguf_lora import llama_scale
from lorakit.io import read_adapter_config
from tests.tiny import cli_error_line, randomize_lora_b, tiny_llama

N_HEAD, N_KV_HEAD, HEAD_DIM = 4, 2, 8  # tiny_llama's attention


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_llama (untied) saved as a transformers folder: the base an adapter's export reads config.json from."""
    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_llama().save_pretrained(folder)
    return folder


def _adapter(folder: Path, **kwargs: object) -> Path:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(**kwargs))  # type: ignore[arg-type]
    randomize_lora_b(model)
    return lorakit.save_adapter(model, folder)


def _export(adapter: Path, base: Path, out: Path, *extra: str) -> gguf.GGUFReader:
    assert main(["export", "--adapter", str(adapter), "--model", str(base), "--output", str(out), *extra]) == 0
    return gguf.GGUFReader(out)


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor de-quantised to float64, in torch's (rows, columns) order."""
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(tuple(reversed(t.shape)))
        for t in reader.tensors
    }


def _llama_cpp_rows(n_head: int, head_dim: int) -> list[int]:
    """For each GGUF row of a q/k projection, the transformers row it holds, written out index by index."""
    rows = []
    for h in range(n_head):
        for i in range(head_dim // 2):
            for t in range(2):
                rows.append(h * head_dim + t * head_dim // 2 + i)
    return rows


def _delta(files: dict[str, np.ndarray], name: str, alpha: float) -> np.ndarray:
    """What llama.cpp adds to ``name``'s weight: scale * B_g A_g with scale = alpha / r (``llama_scale``)."""
    a, b = files[f"{name}.weight.lora_a"], files[f"{name}.weight.lora_b"]
    return llama_scale(alpha, b.shape[1]) * (b @ a)


def _reference(adapter: Path, module: str) -> np.ndarray:
    """scaling * B A of ``module`` in float64, straight from the adapter files and its config."""
    config = read_adapter_config(adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    a = weights[f"base_model.model.{module}.lora_A.weight"].double().numpy()
    b = weights[f"base_model.model.{module}.lora_B.weight"].double().numpy()
    r, alpha = config.rank_and_alpha(module)
    return alpha / (math.sqrt(r) if config.use_rslora else r) * (b @ a)


def test_tensor_names_are_llama_cpps() -> None:
    """Every Llama module lorakit maps gets the name in llama.cpp's own table (shipped in the gguf package)."""
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3)
    modules = ["model.embed_tokens", "model.norm", "lm_head"] + [
        f"model.layers.2.{m}"
        for m in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                  "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]  # fmt: skip
    for module in modules:
        assert gguf_name(module) == table.get_name(module), module
    assert gguf_name("model.layers.2.self_attn.rotary_emb") is None


def test_metadata_and_names_as_llama_cpps_converter_writes_them(base_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "a", r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    reader = _export(adapter, base_dir, tmp_path / "a.gguf")
    fields = {k: reader.fields[k].contents() for k in reader.fields if not k.startswith("GGUF.")}
    assert fields == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                      "general.name": "a", "adapter.lora.alpha": 8.0, "general.quantization_version": 2}  # fmt: skip
    assert reader.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order: (columns, rows)
    for i in range(2):
        assert shapes[f"blk.{i}.attn_q.weight.lora_a"] == (32, 4)  # A (r, in)
        assert shapes[f"blk.{i}.attn_q.weight.lora_b"] == (4, 32)  # B (out, r)
        assert shapes[f"blk.{i}.ffn_down.weight.lora_a"] == (48, 4)
        assert shapes[f"blk.{i}.ffn_down.weight.lora_b"] == (4, 32)
    assert len(shapes) == 8
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}


def test_q_and_k_updates_are_permuted_as_llama_cpp_permutes_their_weights(base_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "a", r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    files = _tensors(_export(adapter, base_dir, tmp_path / "a.gguf"))
    for i in range(2):
        checks = [("q_proj", "attn_q", N_HEAD), ("k_proj", "attn_k", N_KV_HEAD), ("v_proj", "attn_v", 0)]
        for proj, name, heads in checks:
            expected = _reference(adapter, f"model.layers.{i}.self_attn.{proj}")
            if heads:
                expected = expected[_llama_cpp_rows(heads, HEAD_DIM)]
            got = _delta(files, f"blk.{i}.{name}", alpha=8.0)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
            if heads:  # the permutation is not the identity here
                assert not np.allclose(got, _reference(adapter, f"model.layers.{i}.self_attn.{proj}"))


def test_rslora_becomes_an_equivalent_alpha_and_patterns_fold_into_b(base_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(
        tmp_path / "a", r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"],
        rank_pattern={"v_proj": 2, "layers.1.self_attn.o_proj": 8}, alpha_pattern={"up_proj": 3.0},
    )  # fmt: skip
    reader = _export(adapter, base_dir, tmp_path / "a.gguf")
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    assert alpha == pytest.approx(6 * math.sqrt(4), rel=1e-7)  # lora_alpha / sqrt(r) == alpha_gguf / r
    files = _tensors(reader)
    for i in range(2):
        checks = [("self_attn.q_proj", "attn_q", N_HEAD), ("self_attn.v_proj", "attn_v", 0),
                  ("self_attn.o_proj", "attn_output", 0), ("mlp.up_proj", "ffn_up", 0)]  # fmt: skip
        for module, name, heads in checks:
            expected = _reference(adapter, f"model.layers.{i}.{module}")
            if heads:
                expected = expected[_llama_cpp_rows(heads, HEAD_DIM)]
            np.testing.assert_allclose(_delta(files, f"blk.{i}.{name}", alpha), expected, rtol=1e-5, atol=1e-7)
    assert files["blk.1.attn_output.weight.lora_b"].shape == (32, 8)  # the pattern's rank is the tensor's
    assert files["blk.0.attn_v.weight.lora_b"].shape == (16, 2)


def test_untied_embedding_and_output_head(base_dir: Path, tmp_path: Path) -> None:
    """An embedding's A is stored transposed (llama.cpp gathers rows of it by token id), the head as any Linear."""
    adapter = _adapter(tmp_path / "a", r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head"])
    files = _tensors(_export(adapter, base_dir, tmp_path / "a.gguf"))
    weights = load_file(adapter / "adapter_model.safetensors")
    a = weights["base_model.model.model.embed_tokens.lora_embedding_A"].double().numpy()  # (r, vocab)
    b = weights["base_model.model.model.embed_tokens.lora_embedding_B"].double().numpy()  # (dim, r)
    np.testing.assert_allclose(files["token_embd.weight.lora_a"], a.T, rtol=0, atol=0)
    token = 5  # llama.cpp: scale * B @ A_g[token]
    np.testing.assert_allclose(2.0 * files["token_embd.weight.lora_b"] @ files["token_embd.weight.lora_a"][token],
                               2.0 * (b @ a)[:, token], rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(_delta(files, "output", 8.0), _reference(adapter, "lm_head"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "q8_0"])
def test_dtypes_follow_the_converters_rules(dtype: str, base_dir: Path, tmp_path: Path) -> None:
    """Each precision stores the fp32 values to its own rounding; Q8_0 needs rows of 32 (A: 32 long, B: r = 4 long,
    which falls back to F16 as in llama.cpp's converter)."""
    adapter = _adapter(tmp_path / "a", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    exact = _tensors(_export(adapter, base_dir, tmp_path / "fp32.gguf"))
    reader = _export(adapter, base_dir, tmp_path / f"{dtype}.gguf", "--dtype", dtype)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    T = gguf.GGMLQuantizationType
    want_a = {"fp16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[dtype]
    want_b = {"fp16": T.F16, "bf16": T.BF16, "q8_0": T.F16}[dtype]
    for name, kind in kinds.items():
        assert kind == (want_a if name.endswith("lora_a") else want_b), name
    tolerance = {"fp16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2}[dtype]
    for name, value in _tensors(reader).items():
        np.testing.assert_allclose(value, exact[name], rtol=0, atol=tolerance * np.abs(exact[name]).max())


def _one_line(capsys: pytest.CaptureFixture[str], adapter: Path, base: Path, tmp_path: Path) -> str:
    capsys.readouterr()  # drop what building the test's files printed
    return cli_error_line(capsys, ["export", "--adapter", str(adapter), "--model", str(base),
                                   "--output", str(tmp_path / "x.gguf")])  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "whole-module weights"),
    ],
    ids=["dora", "modules_to_save"],
)
def test_adapters_without_a_lora_gguf_form_are_refused_pointing_to_merge(kwargs, words, capsys, base_dir, tmp_path):
    line = _one_line(capsys, _adapter(tmp_path / "a", **kwargs), base_dir, tmp_path)
    assert words in line and "--merge" in line
    assert not (tmp_path / "x.gguf").exists()


def test_trained_biases_are_refused_pointing_to_merge(capsys, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    config = tiny_llama().config
    config.attention_bias = True
    base = tmp_path / "biased"
    LlamaForCausalLM(config).save_pretrained(base)
    model = lorakit.add_adapter(LlamaForCausalLM(config), lorakit.LoraConfig(target_modules=["q_proj"], bias="all"))
    line = _one_line(capsys, lorakit.save_adapter(model, tmp_path / "a"), base, tmp_path)
    assert "trained biases" in line and "--merge" in line


def test_ia3_is_refused_pointing_to_merge(capsys, base_dir: Path, tmp_path: Path) -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.IA3Config(target_modules=["k_proj", "down_proj"],
                                                               feedforward_modules=["down_proj"]))  # fmt: skip
    adapter = lorakit.save_adapter(model, tmp_path / "ia3")
    line = _one_line(capsys, adapter, base_dir, tmp_path)
    assert "IA3" in line and "--merge" in line


def test_tied_embedding_is_refused_for_lora_files(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    """llama.cpp runs a tied head through the token embedding's tensor, so an embedding update would hit both."""
    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"]))
    adapter = lorakit.save_adapter(model, tmp_path / "a")
    line = _one_line(capsys, adapter, tiny_model_dir, tmp_path)
    assert "ties its embedding and output head" in line and "--merge" in line


def test_adapter_for_another_base_is_refused(capsys, base_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "a", r=2, target_modules=["up_proj"])  # tiny_llama: intermediate 48
    wide = tmp_path / "wide"
    config = copy.deepcopy(tiny_llama().config)
    config.intermediate_size = 64
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(config).save_pretrained(wide)
    line = _one_line(capsys, adapter, wide, tmp_path)
    assert "48x32" in line and "64x32" in line and "another base model" in line


def test_other_architectures_are_refused(capsys, tmp_path: Path) -> None:
    from tests.tiny import tiny_gpt2

    base = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(base)
    model = lorakit.add_adapter(tiny_gpt2(), lorakit.LoraConfig(r=2, target_modules=["c_attn"]))
    adapter = lorakit.save_adapter(model, tmp_path / "a")
    line = _one_line(capsys, adapter, base, tmp_path)
    assert "'gpt2'" in line and "Llama" in line


def test_unknown_dtype_is_one_line(capsys, base_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "a", r=2, target_modules=["q_proj"])
    line = cli_error_line(capsys, ["export", "--adapter", str(adapter), "--output", "x.gguf", "--dtype", "q4_1"])
    assert "--dtype" in line and "q8_0" in line


def test_builtin_adapter_exports_against_the_builtin_gguf(tmp_path: Path) -> None:
    """A built-in run's adapter needs no --model: its base is the built-in model, whose GGUF file the Modelfile uses
    (with ChatML's Go template, SmolLM2's default system prompt and the end-of-turn stop)."""
    from lorakit.models import builtin_gguf

    model, _ = lorakit.load_model()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = lorakit.save_adapter(model, tmp_path / "run")
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "out" / "run.gguf")]) == 0
    assert len(gguf.GGUFReader(tmp_path / "out" / "run.gguf").tensors) == 2 * 30
    modelfile = (tmp_path / "out" / "run.Modelfile").read_text()
    lines = modelfile.splitlines()
    assert f"FROM {builtin_gguf()}" in lines and "ADAPTER ./run.gguf" in lines
    assert "{{ .Content }}<|im_end|>" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
