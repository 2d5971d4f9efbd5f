"""Quantised tensors and QuantLinear against float64 references: NF4 and int8 round trips, the forward and the
hand-written backward, and the quantised SmolLM2's size and outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lorakit
from lorakit.quant import QuantLinear, dequantize, quantize_model, quantized_bytes, quantized_modules
from lorakit.quant.backends import quantize_weight, scale_block
from lorakit.quant.linear import Scratch, _FrozenQuantLinear, dequantize_to_scratch
from tests.tiny import tiny_llama, token_ids

# The 16 NF4 levels of QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes' table), to 4 decimals.
NF4_LEVELS = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]  # fmt: skip


def _weight(rows: int, cols: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 0.02
    w[3, 5] = 0.3  # an outlier: its block's other weights lose precision, the rest must not
    return w.to(dtype)


def _nf4_reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block-wise NF4 in float64 without double quantisation: (codes, de-quantised weight, block absmax)."""
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float64)
    blocks = w.double().reshape(-1, 64)  # (n_blocks, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)  # (n_blocks, 1)
    codes = ((blocks / absmax)[..., None] - levels).abs().argmin(dim=-1)  # (n_blocks, 64)
    return codes.reshape(w.shape), (levels[codes] * absmax).reshape(w.shape), absmax.expand_as(blocks).reshape(w.shape)


def _nf4_codes(q: torch.Tensor) -> torch.Tensor:
    packed = q.quantized_data  # two codes per byte, the first in the high nibble
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(q.shape).long()


def test_scale_block_is_256_where_it_divides() -> None:
    assert scale_block(1024) == 256 and scale_block(512 * 3) == 256
    assert scale_block(1728) == 64 and scale_block(24) == 8 and scale_block(7) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_round_trip_within_the_bound_of_block_wise_nf4(dtype: torch.dtype) -> None:
    w = _weight(192, 576, dtype=dtype)  # 1728 blocks of 64: scales double-quantised in groups of 64
    q = quantize_weight(w, "nf4")
    assert q.shape == w.shape and q.dtype == dtype and q.block_size == 64 and q.scaler_block_size == 64
    assert q.quantized_scalers.dtype == torch.int8  # double quantisation: one int8 per block scale
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float64)
    torch.testing.assert_close(q.nf4.double(), levels, atol=1e-4 if dtype == torch.float32 else 4e-3, rtol=0)

    codes_ref, deq_ref, absmax = _nf4_reference(w)
    deq = dequantize(q).double()
    # Nearest level, as the float64 reference picks it (a few weights within rounding of a midpoint may differ).
    assert (_nf4_codes(q) == codes_ref).double().mean() > 0.995
    # Error of NF4 with exact scales: at most half the widest gap between levels (0.3038 / 2) times the block's
    # absmax; double quantisation adds |level| * (its scale error <= A / 128, A = max |scale - mean scale|).
    scales = absmax.reshape(-1, 64)[:, 0]
    a = (scales - scales.mean()).abs().max()
    eps = {torch.float32: 1e-6, torch.bfloat16: 6e-3}[dtype] * absmax  # levels and products rounded
    assert ((deq - w.double()).abs() <= 0.1519 * absmax + a / 128 + eps).all()
    same = _nf4_codes(q) == codes_ref
    assert ((deq - deq_ref).abs()[same] <= (a / 128 + eps)[same]).all()
    # A block far from the outlier keeps its own fine scale: the error there is small in absolute terms.
    assert (deq - w.double())[100].abs().max() < 0.01


def test_int8_round_trip_within_half_a_step_per_row() -> None:
    w = _weight(48, 32)
    q = quantize_weight(w, "int8")
    step = w.double().abs().amax(dim=1, keepdim=True) / 127.5  # symmetric absmax scale per output row
    ref = (w.double() / step).round().clamp(-128, 127) * step  # float64 reference
    deq = dequantize(q).double()
    assert ((deq - w.double()).abs() <= step * (0.5 + 1e-4)).all()  # + float32 rounding of code x scale
    close = (deq - ref).abs() <= 1e-7
    assert close.double().mean() > 0.99  # the rest: weights within float32 rounding of a half step
    assert ((deq - ref).abs()[~close] <= step.expand_as(ref)[~close] * (1 + 1e-4)).all()


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_equals_torchaos_own_bit_for_bit(
    scheme: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lorakit.quant.linear.INT8_CHUNK", 50 * 576)  # int8 in blocks of 50, 50, 50 and 42 rows
    q = quantize_weight(_weight(192, 576, dtype=dtype), scheme)
    own = q.get_original_weight() if scheme == "nf4" else q.dequantize()  # torchao's de-quantisation
    assert own.dtype == dtype
    assert torch.equal(dequantize(q), own)
    assert torch.equal(dequantize_to_scratch(q, Scratch()), own)


def test_scratch_buffer_is_shared_by_the_weights_of_one_shape() -> None:
    a, b, c = (quantize_weight(_weight(64, 128 if k < 2 else 64, seed=k), "nf4") for k in range(3))
    scratch = Scratch()
    first = dequantize_to_scratch(a, scratch)
    first_values = first.clone()
    second = dequantize_to_scratch(b, scratch)
    assert second.data_ptr() == first.data_ptr(), "one buffer per shape, overwritten by the next weight"
    assert torch.equal(second, b.get_original_weight()) and not torch.equal(second, first_values)
    assert dequantize_to_scratch(c, scratch).data_ptr() != first.data_ptr()
    assert dequantize(a).data_ptr() != first.data_ptr(), "dequantize() returns a tensor of its own"
    assert dequantize_to_scratch(a, Scratch()).data_ptr() != first.data_ptr(), "another model's scratch is its own"


def test_scratch_belongs_to_the_model() -> None:
    import copy
    import gc
    import weakref

    from lorakit.quant import quantize_model

    model = tiny_llama()
    assert quantize_model(model, "int8"), "tiny_llama's Linears are too small for NF4's blocks, not for int8"
    layers = [m for m in model.modules() if type(m).__name__ == "QuantLinear"]
    assert len({id(m.scratch) for m in layers}) == 1, "the layers of one model share one scratch"
    model(token_ids())
    copied = copy.deepcopy(model)
    assert next(m for m in copied.modules() if type(m).__name__ == "QuantLinear").scratch is not layers[0].scratch
    alive = weakref.ref(layers[0].scratch)
    del model, layers, copied
    gc.collect()
    assert alive() is None, "the buffers go with the model: nothing is kept for the process"


def test_quantized_bytes_counts_codes_and_scales() -> None:
    w = _weight(256, 256)  # 65536 weights, 1024 blocks, 4 groups of 256 scales
    q = quantize_weight(w, "nf4")
    # 4 bits per weight + one int8 scale per block + one float32 factor per group + the mean + the 16-level table
    assert quantized_bytes(q) == 65536 // 2 + 1024 + 4 * 4 + 4 + 16 * 4
    # int8: a float32 scale and an (all-zero) int8 zero point per row
    assert quantized_bytes(quantize_weight(w, "int8")) == 65536 + 256 * 4 + 256
    assert quantized_bytes(w) == 65536 * 4


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_frozen_quant_linear_backward_passes_gradcheck(scheme: str) -> None:
    # torchao's int8 takes float32 at most; gradcheck's finite differences need float64 activations
    weight = quantize_weight(_weight(64, 16, dtype=torch.float64 if scheme == "nf4" else torch.float32), scheme)
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(lambda t: _FrozenQuantLinear.apply(t, weight, Scratch()), (x,), fast_mode=True)
    y = _FrozenQuantLinear.apply(x, weight, Scratch())
    torch.testing.assert_close(y, F.linear(x, dequantize(weight, torch.float64)), atol=1e-7, rtol=0)


def test_backward_keeps_only_the_quantised_weight() -> None:
    """Autograd must not hold a de-quantised copy of the weight until backward (the point of QLoRA's memory)."""
    layer = QuantLinear(quantize_weight(_weight(128, 64), "int8"), None, "int8")
    saved: list[torch.Tensor] = []
    x = torch.randn(4, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x).sum().backward()
    assert saved and all(t is layer.weight or type(t) is type(layer.weight) for t in saved), [type(t) for t in saved]
    torch.testing.assert_close(x.grad, dequantize(layer.weight).sum(dim=0).expand(4, 64))


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_quantized_model_computes_with_the_dequantized_weights(scheme: str) -> None:
    quantized, plain = tiny_llama(), tiny_llama()
    names = quantize_model(quantized, scheme)
    assert len(names) == 2 * 7 and "lm_head" not in names  # 7 Linears per block; the head stays in float
    assert not isinstance(quantized.get_output_embeddings(), QuantLinear)
    with torch.no_grad():
        for name, layer in quantized_modules(quantized).items():
            plain.get_submodule(name).weight.copy_(dequantize(layer.weight))
    x = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(quantized(x).logits, plain(x).logits, atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def smollm2_nf4():
    return lorakit.load_model(quantize="nf4")[0]


@pytest.mark.integration
def test_smollm2_nf4_linear_weights_take_under_0_3x_of_bf16(smollm2_nf4) -> None:
    layers = quantized_modules(smollm2_nf4)
    assert len(layers) == 30 * 7  # q, k, v, o, gate, up, down in each of 30 blocks; not the head or embeddings
    numel = sum(layer.weight.numel() for layer in layers.values())
    ratio = sum(quantized_bytes(layer.weight) for layer in layers.values()) / (2 * numel)
    assert ratio <= 0.3, ratio  # 4.13 bits per weight: 0.258


@pytest.mark.integration
def test_smollm2_nf4_forward_is_close_to_bf16(smollm2, smollm2_nf4) -> None:
    model, tokenizer = smollm2
    ids = tokenizer(["The capital of France is Paris. The capital of Italy is", "def add(a, b):\n    return"],
                    return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        reference = model(**ids).logits.double()  # float32 weights
        bf16 = model.to(torch.bfloat16)(**ids).logits.double()
        model.to(torch.float32)  # the session fixture must stay as it was
        nf4 = smollm2_nf4(**ids).logits.double()
    mask = ids["attention_mask"].bool()

    def relative(logits: torch.Tensor) -> float:
        return float((logits - reference)[mask].norm() / reference[mask].norm())

    def top1(logits: torch.Tensor) -> float:
        return float((logits.argmax(-1) == reference.argmax(-1))[mask].double().mean())

    # NF4 loses more than bf16 rounding, but stays close: same next token almost everywhere.
    assert relative(bf16) < relative(nf4) < 0.25, (relative(bf16), relative(nf4))
    assert top1(nf4) >= 0.8, top1(nf4)
