"""Scoring for ``lorakit compare``: a task split, and the forgetting probe, on a model ready for inference.

The probe measures what the base model could do before training, on two kinds of data it never trains on:

- perplexity on 40 short passages of ordinary text (the completion after a first sentence);
- short general questions (capitals, languages, numbers, animals, opposites, ...), greedy replies of up to 24
  tokens, a question answered when the reply contains its answer (or an accepted variant: "7" for "seven") as a
  whole word, case aside. Only the questions the base model answers are asked after training; the score is the
  share of them still answered.

Why 345 questions: forgetting is read from the share kept, and a share measured on n questions has a binomial
standard error of sqrt(p (1 - p) / n); the difference between two methods has about sqrt(2) times that. On the
24 questions the base answered out of the first 39, a difference of 3 answers (12 points) was within one standard
error (11.5 points at p = 0.75). The built-in model answers 192 of these 345 questions, so 192 count: the
standard error of a difference at p = 0.75 is then 4.4 points, and a difference of 10 points (about 20 answers)
is more than two of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorakit.data.jsonl import read_jsonl
from lorakit.tasks.knowledge import normalise

BUILTIN = Path(__file__).parents[2] / "tasks" / "builtin"
PROBE_TEXT = BUILTIN / "probe_text.jsonl"
PROBE_QUESTIONS = BUILTIN / "probe_questions.jsonl"


def load_model_for_scoring(
    model: str | None, folder: Path | None, full: bool, device: str = "auto", precision: str = "auto"
) -> tuple[Any, Any]:
    """The base model (``folder`` None), the base plus the adapter in ``folder``, or the fully fine-tuned model in
    ``folder``; merged and ready for inference on ``device`` in ``precision``."""
    from lorakit.cli.common import model_with_adapter

    if folder is not None and full:
        return model_with_adapter(str(folder), None, None, False, device, precision)
    return model_with_adapter(model, str(folder) if folder is not None else None, "none", False, device, precision)


def score(m: Any, tokenizer: Any, kind: str, path: Path) -> dict[str, float]:
    """The metrics of one split. contacts: exact match and field accuracy; knowledge: exact answer (case and a
    final full stop aside); generation: ``lorakit eval``'s reply metrics; loss: loss and perplexity."""
    from lorakit.eval.generate import generate_all
    from lorakit.eval.perplexity import evaluate_loss
    from lorakit.eval.replies import evaluate_generation
    from lorakit.tasks.contacts_eval import evaluate_contacts

    if kind == "contacts":
        metrics = evaluate_contacts(m, tokenizer, str(path), None, batch_size=32, progress=False)
        return {"exact_match": metrics["exact_match"], "field_accuracy": metrics["field_accuracy"]}
    if kind == "loss":
        metrics = evaluate_loss(m, tokenizer, str(path))
        return {"loss": metrics["loss"], "perplexity": metrics["perplexity"]}
    records = read_jsonl(path)
    if kind == "generation":
        metrics = evaluate_generation(m, tokenizer, records, batch_size=32, progress=False)
        return {k: v for k, v in metrics.items() if isinstance(v, float) and k != "seconds"}
    replies = generate_all(m, tokenizer, [r["messages"] for r in records], 16, batch_size=64, progress=False)
    answers = [r["messages"][-1]["content"] for r in records]
    exact = [normalise(reply) == normalise(a) for reply, a in zip(replies, answers, strict=True)]
    return {"exact_match": sum(exact) / len(exact)}


def probe_questions() -> list[dict[str, Any]]:
    """The probe's questions, each with its ``accept``ed answers (the reference first)."""
    rows = [json.loads(line) for line in PROBE_QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"messages": r["messages"], "accept": [r["messages"][-1]["content"], *r.get("accept", [])]} for r in rows]


def answered(reply: str, accept: list[str]) -> bool:
    """The reply contains one of the accepted answers as a whole word or phrase, case aside ("4" is not in "14")."""
    text = reply.casefold()
    return any(re.search(rf"(?<!\w){re.escape(a.casefold())}(?!\w)", text) for a in accept)


def probe(m: Any, tokenizer: Any, keep: list[int] | None) -> tuple[dict[str, float], list[int]]:
    """(perplexity on the passages, the share of ``keep`` still answered and how many that is; the questions
    answered). ``keep`` None: this is the base model, ask every question (and its share is 1 by definition)."""
    from lorakit.eval.generate import generate_all
    from lorakit.eval.perplexity import evaluate_loss

    ppl = evaluate_loss(m, tokenizer, str(PROBE_TEXT))["perplexity"]
    questions = probe_questions()
    asked = list(range(len(questions))) if keep is None else keep
    replies = generate_all(m, tokenizer, [questions[i]["messages"] for i in asked], 24, batch_size=64, progress=False)
    right = [i for i, reply in zip(asked, replies, strict=True) if answered(reply, questions[i]["accept"])]
    if keep is None:  # the base: every question it answers counts, and it keeps them all
        return {"perplexity": ppl, "questions": 1.0, "n_questions": len(right), "asked": len(asked)}, right
    share = len(right) / len(asked) if asked else 1.0  # none to lose: nothing lost
    return {"perplexity": ppl, "questions": share, "n_questions": len(asked), "kept": len(right)}, right
