"""lorakit's greedy decoding loop (shared prefix run once, finished rows dropped) against transformers' generate."""

from __future__ import annotations

import pytest
import torch

from lorakit.eval.generate import _left_pad, generate_batch, greedy_ids, prompt_ids, shared_prefix


def test_shared_prefix_leaves_every_row_a_token_of_its_own() -> None:
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts: the last token stays each row's own
    assert shared_prefix([[1, 2], [3, 4]]) == 0
    assert shared_prefix([[1, 2, 3]]) == 0  # one row: nothing to share


def _hf_greedy(model, prompts: list[list[int]], new: int, stop: int, pad: int) -> list[list[int]]:
    inputs = _left_pad(prompts, pad)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, do_sample=False, eos_token_id=stop, pad_token_id=pad,
                             top_k=None)  # fmt: skip
    rows = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(stop) + 1] if stop in row else row)
    return rows


@pytest.fixture
def varied_model(smollm2_tokenizer):
    """A tiny random Llama whose greedy replies vary (tiny_model_dir's tied, small weights repeat one token); fp32,
    so a prefix run apart from the rows gives the same logits up to float rounding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, initializer_range=0.2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_greedy_ids_match_transformers_generate(varied_model, smollm2_tokenizer) -> None:
    model, tokenizer = varied_model, smollm2_tokenizer
    system = {"role": "system", "content": "Extract the contact details as JSON."}
    users = ["Ann, ann@x.org", "call Bob Smith on 555 0101 at Acme in Lyon please", "hi", "Dana from Initech, Oslo"]
    prompts = [prompt_ids(tokenizer, [system, {"role": "user", "content": u}]) for u in users]
    n_shared = shared_prefix(prompts)
    assert n_shared > 5 and len({len(p) for p in prompts}) == 4, "a shared system prompt, rows of different lengths"
    pad = tokenizer.pad_token_id
    # The random model never says end-of-turn: stop at a token it does produce, so rows stop at different steps.
    free = _hf_greedy(model, prompts, 12, stop=pad, pad=pad)
    stop = free[2][4]
    want = _hf_greedy(model, prompts, 12, stop=stop, pad=pad)
    assert len({len(r) for r in want}) > 1, "rows finish at different steps: some leave the batch early"
    got = greedy_ids(model, prompts, 12, stop, pad)
    assert got == want
    # one prompt alone (no prefix to share) and the text path the CLI uses
    assert greedy_ids(model, prompts[2:3], 12, stop, pad) == _hf_greedy(model, prompts[2:3], 12, stop, pad)
    text = generate_batch(model, tokenizer, prompts, 12)
    assert text == [
        tokenizer.decode(r, skip_special_tokens=True)
        for r in _hf_greedy(model, prompts, 12, tokenizer.eos_token_id, pad)
    ]


def test_a_generation_config_that_changes_greedy_decoding_goes_through_generate(
    varied_model, smollm2_tokenizer
) -> None:
    model, tokenizer = varied_model, smollm2_tokenizer
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": u}]) for u in ("hi", "Dana from Initech, Oslo")]
    plain = generate_batch(model, tokenizer, prompts, 12)
    first = greedy_ids(model, prompts, 1, None, tokenizer.pad_token_id)[0][0]
    model.generation_config.suppress_tokens = [first]  # the first reply's first token is banned
    constrained = generate_batch(model, tokenizer, prompts, 12)
    want = model.generate(
        **_left_pad(prompts, tokenizer.pad_token_id),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        top_k=None,
    )
    width = len(_left_pad(prompts, tokenizer.pad_token_id)["input_ids"][0])
    assert constrained == [tokenizer.decode(r, skip_special_tokens=True) for r in want[:, width:]]
    assert constrained != plain, "the banned token changes the replies (so the check above means something)"
