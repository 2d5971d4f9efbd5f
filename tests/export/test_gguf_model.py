"""``lorakit export --merge``: the merged model as one GGUF file, read back with the ``gguf`` package.

The strongest check without llama.cpp: the built-in model's own file was written by llama.cpp's converter, so
lorakit's float32 GGUF of the built-in base must hold the same tensor names, shapes, hyper-parameters and
tokenizer, and that file's values de-quantised."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.export.gguf_model import llama3_rope_factors
from tests.tiny import randomize_lora_b


@functools.cache
def _read(path: Path) -> gguf.GGUFReader:
    """One parse per file: reading a GGUF's 49,152-token vocabulary in Python takes seconds."""
    return gguf.GGUFReader(path)


def _fields(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        for t in reader.tensors
    }


def _llama_cpp_rows(n_head: int, head_dim: int) -> list[int]:
    return [h * head_dim + t * head_dim // 2 + i for h in range(n_head) for i in range(head_dim // 2) for t in (0, 1)]


@pytest.fixture(scope="module")
def merged(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random adapter on the tiny model merged by ``lorakit export --merge --dtype fp32``, and the merged weights
    as transformers holds them."""
    folder = tmp_path_factory.mktemp("gguf-merge")
    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"))
    randomize_lora_b(model)
    adapter = lorakit.save_adapter(model, folder / "adapter")
    assert main(["export", "--adapter", str(adapter), "--merge", "--dtype", "fp32", "--model", str(tiny_model_dir),
                 "--output", str(folder / "merged.gguf")]) == 0  # fmt: skip
    plain = lorakit.unload(model, merge=True)
    return folder / "merged.gguf", {k: v.detach().clone() for k, v in plain.state_dict().items()}


def test_merged_tensors_are_the_merged_weights_in_llama_cpps_layout(merged) -> None:
    path, weights = merged
    files = _tensors(_read(path))
    expected_names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                          "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }  # fmt: skip
    assert set(files) == expected_names  # tied: no output.weight
    rows = {"q_proj": _llama_cpp_rows(4, 8), "k_proj": _llama_cpp_rows(2, 8)}
    for i in range(2):
        for proj, name in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            w = weights[f"model.layers.{i}.self_attn.{proj}.weight"].numpy()
            np.testing.assert_array_equal(files[f"blk.{i}.{name}.weight"], w[rows[proj]] if proj in rows else w)
        down = weights[f"model.layers.{i}.mlp.down_proj.weight"]
        np.testing.assert_array_equal(files[f"blk.{i}.ffn_down.weight"], down)
    np.testing.assert_array_equal(files["token_embd.weight"], weights["model.embed_tokens.weight"])


def test_merged_file_metadata_and_tokenizer(merged, smollm2_tokenizer) -> None:
    path, _ = merged
    fields = _fields(_read(path))
    assert {k: fields[k] for k in fields if k.startswith(("general.", "llama."))} == {
        "general.architecture": "llama", "general.type": "model", "general.name": fields["general.name"],
        "general.file_type": 0, "general.quantization_version": 2,
        "llama.block_count": 2, "llama.context_length": 512, "llama.embedding_length": 32,
        "llama.feed_forward_length": 48, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-6),
        "llama.attention.key_length": 8, "llama.attention.value_length": 8,
        "llama.vocab_size": 49152, "llama.rope.dimension_count": 8,
    }  # fmt: skip
    tok = smollm2_tokenizer
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and all(tokens[i] == t for t, i in list(tok.get_vocab().items())[:2000])
    assert tokens[tok.eos_token_id] == "<|im_end|>" and fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.token_type"][tok.eos_token_id] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.add_bos_token"] is False  # SmolLM2 adds no BOS
    assert fields["tokenizer.chat_template"] == tok.chat_template
    assert len(fields["tokenizer.ggml.merges"]) > 40000


def test_merged_modelfile_points_at_the_file(merged) -> None:
    path, _ = merged
    lines = path.with_suffix(".Modelfile").read_text().splitlines()
    assert "FROM ./merged.gguf" in lines and not any(line.startswith("ADAPTER") for line in lines)
    assert 'PARAMETER stop "<|im_end|>"' in lines


def test_merged_q8_0_types_follow_the_converters_rules(tiny_model_dir: Path, merged, tmp_path: Path) -> None:
    path, _ = merged
    adapter = path.parent / "adapter"
    assert main(["export", "--adapter", str(adapter), "--merge", "--dtype", "q8_0", "--model", str(tiny_model_dir),
                 "--output", str(tmp_path / "q8.gguf")]) == 0  # fmt: skip
    reader = gguf.GGUFReader(tmp_path / "q8.gguf")
    T = gguf.GGMLQuantizationType
    for t in reader.tensors:
        want = T.F32 if t.name.endswith("norm.weight") else T.Q8_0  # every row here is 32 or 48 long
        if t.name.endswith("ffn_down.weight"):
            want = T.F16  # rows of 48: not a multiple of Q8_0's 32-block, so F16 as in llama.cpp's converter
        assert t.tensor_type == want, t.name
    assert _fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    exact = _tensors(_read(path))
    for name, value in _tensors(reader).items():
        np.testing.assert_allclose(value, exact[name], rtol=0, atol=1e-2 * np.abs(exact[name]).max())


def test_llama3_rope_factors_match_transformers() -> None:
    """llama.cpp divides each rope frequency by rope_freqs[i]; transformers computes the divided frequencies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = 64
    plain = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factors = llama3_rope_factors(config.to_dict())
    assert factors is not None and factors.shape == (32,) and factors.min() == 1.0 and factors.max() == 32.0
    torch.testing.assert_close(plain / factors.double(), scaled.double(), rtol=1e-6, atol=0)


@pytest.mark.slow  # the built-in model written whole (~40 s): make test-extra, run by .ci/run
def test_builtin_base_as_gguf_equals_its_original_file(tmp_path: Path) -> None:
    """A zero adapter merged into the built-in model and written at fp32 is the original Q4_1 file de-quantised:
    same tensor names, shapes and values, same hyper-parameters, same tokenizer fields."""
    from lorakit.models import builtin_gguf

    model, _ = lorakit.load_model()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=1, target_modules=["q_proj"]))  # B = 0: merging changes nothing
    adapter = lorakit.save_adapter(model, tmp_path / "zero")
    del model
    assert main(["export", "--adapter", str(adapter), "--merge", "--dtype", "fp32",
                 "--output", str(tmp_path / "base.gguf")]) == 0  # fmt: skip
    ours, original = gguf.GGUFReader(tmp_path / "base.gguf"), gguf.GGUFReader(builtin_gguf())
    mine, theirs = _fields(ours), _fields(original)
    for key, value in theirs.items():
        if key.startswith(("tokenizer.", "llama.")) or key == "general.architecture":
            assert mine[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    ours_t = {t.name: t for t in ours.tensors}
    assert set(ours_t) == {t.name for t in original.tensors}
    for t in original.tensors:
        assert ours_t[t.name].shape.tolist() == t.shape.tolist(), t.name
        value = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(np.asarray(ours_t[t.name].data).reshape(value.shape), value, err_msg=t.name)
