"""The trainer's primitives: ``step`` is ``forward_backward`` + ``optim_step``; a callable loss sees the same
log-probabilities the cross-entropy is made of; ``sample``'s log-probabilities are a forward pass's, its random
numbers the trainer's own."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.eval.generate import greedy_ids
from lorakit.io import adapter_tensors
from lorakit.train.sampling import completion_batch
from tests.tiny import tiny_llama


class TinyTokenizer:
    """Just what the trainer reads of a tokenizer when prompts are token ids: pad, eos (None: never stop), decode."""

    pad_token_id, eos_token_id = 0, None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _trainer(seed: int = 0, **config: object) -> lorakit.Trainer:
    cfg = dict(r=4, lora_alpha=8, precision="fp32", max_steps=5, lr=1e-2, seed=seed, lora_dropout=0.1)
    trainer = lorakit.Trainer(tiny_llama(), TinyTokenizer(), lorakit.TrainConfig(**{**cfg, **config}))  # type: ignore[arg-type]
    with torch.no_grad():  # B != 0, so the adapter changes the model from the start
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    return trainer


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 97, (3, 12), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 9:] = -100
    return {"input_ids": ids, "labels": labels}


def test_step_is_forward_backward_then_optim_step_exactly() -> None:
    a, b = _trainer(), _trainer()
    for _ in range(3):
        stepped = a.step(_batch())
        done, opt = b.forward_backward(_batch()), b.optim_step()
        assert (stepped["loss"], stepped["grad_norm"], stepped["lr"]) == (done["loss"], opt["grad_norm"], opt["lr"])
    wa, wb = adapter_tensors(a.model, "default"), adapter_tensors(b.model, "default")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "bit for bit, dropout masks included"


def test_a_callable_loss_gets_the_log_probs_the_cross_entropy_is_made_of() -> None:
    a, b = _trainer(lora_dropout=0.0), _trainer(lora_dropout=0.0)
    batch = _batch()
    n = int((batch["labels"][:, 1:] != -100).sum())
    seen = {}

    def mean_nll(log_probs: torch.Tensor, got: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        seen["shape"], seen["zero_off_labels"] = log_probs.shape, bool((log_probs[got["labels"] == -100] == 0).all())
        return -log_probs.sum() / n, {"tokens_seen": float((log_probs != 0).sum())}

    want = a.forward_backward(batch)
    got = b.forward_backward(batch, loss=mean_nll)
    assert seen == {"shape": batch["input_ids"].shape, "zero_off_labels": True}
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6) and got["tokens_seen"] == n
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # and by hand: log p(token t) from a plain forward pass of the same model
    with torch.no_grad():
        logits = b.model(input_ids=batch["input_ids"]).logits.double()
    hand = torch.log_softmax(logits[:, :-1], -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    keep = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(b.log_probs(batch)[:, 1:][keep].double(), hand[keep], rtol=1e-5, atol=1e-5)


def test_sampled_log_probs_are_a_forward_pass_over_the_sampled_sequence() -> None:
    trainer = _trainer()
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 3], [11, 12]]  # a shared prefix, and one that shares nothing
    samples = trainer.sample(prompts, n=3, max_new_tokens=6, temperature=1.0)
    assert [s.prompt for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and all(len(s.ids) == 6 for s in samples)
    assert len({tuple(s.ids) for s in samples}) > 5, "samples differ"
    batch = completion_batch(samples, pad_id=0)
    forward = trainer.log_probs(batch)  # dropout off, as in sampling
    keep = batch["labels"] != -100
    torch.testing.assert_close(forward[keep], batch["old_log_probs"][keep], rtol=1e-4, atol=1e-5)
    assert all(s.text == " ".join(map(str, s.ids)) and not s.stopped for s in samples)


def test_sampling_draws_from_the_trainer_s_own_generator() -> None:
    prompts = [[5, 6, 7, 8], [9, 10]]
    outside = torch.get_rng_state()
    first = [s.ids for s in _trainer(seed=1).sample(prompts, n=4, max_new_tokens=5)]
    assert torch.equal(torch.get_rng_state(), outside), "the global RNG is untouched"
    assert [s.ids for s in _trainer(seed=1).sample(prompts, n=4, max_new_tokens=5)] == first, "same seed, same samples"
    assert [s.ids for s in _trainer(seed=2).sample(prompts, n=4, max_new_tokens=5)] != first
    # the sampling state is part of the trainer's state: a resumed trainer draws what the first would have drawn next
    trainer = _trainer(seed=1)
    trainer.sample(prompts, n=4, max_new_tokens=5)
    state = trainer.state_dict()
    following = [s.ids for s in trainer.sample(prompts, n=4, max_new_tokens=5)]
    assert following != first
    resumed = _trainer(seed=1)  # the same weights, its sampler at the start until the state comes back
    resumed.load_state_dict(state)
    assert [s.ids for s in resumed.sample(prompts, n=4, max_new_tokens=5)] == following


def test_greedy_and_base_sampling_match_the_plain_decoding_loop() -> None:
    trainer = _trainer()
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    with torch.no_grad():
        trainer.model.eval()
        adapted = greedy_ids(trainer.model, prompts, 6, None, 0)
        with lorakit.disable_adapters(trainer.model):
            base = greedy_ids(trainer.model, prompts, 6, None, 0)
    assert [s.ids for s in trainer.sample(prompts, n=2, max_new_tokens=6, temperature=0)] == [
        row for row in adapted for _ in range(2)
    ]
    assert [s.ids for s in trainer.sample(prompts, max_new_tokens=6, temperature=0, adapter=False)] == base
    assert base != adapted, "the adapter changes the model"
    plain = tiny_llama()  # the base, loaded apart from the trainer's
    assert greedy_ids(plain, prompts, 6, None, 0) == base
    # a nucleus too small to hold a second token is greedy
    nucleus = [s.ids for s in trainer.sample(prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6)]
    assert nucleus == adapted
