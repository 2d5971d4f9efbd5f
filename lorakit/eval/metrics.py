"""Scores of generated replies against references, for a user's own chat or completion data.

- ``exact_match``: the reply equals the reference, whitespace at the ends aside (as parsed JSON when the reference
  is a JSON object, so key order and spacing do not count);
- ``token_f1``: SQuAD's token overlap F1 (lower-cased, punctuation and articles dropped, bag of words);
- ``rouge_l``: ROUGE-L F-measure (longest common subsequence of words) from Google's ``rouge-score`` package, the
  reference implementation of the summarisation papers (its tokenizer keeps ASCII letters and digits only);
- when every reference is a JSON object: ``json_valid`` (the reply is one JSON object) and ``field_accuracy`` (the
  share of the reference's keys whose value the reply has exactly; 0 for an invalid reply).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lorakit.errors import LorakitError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def json_object(text: str) -> dict | None:
    """``text`` as a JSON object, or None when it is not exactly one."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def normalise(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, words split on white space."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def token_f1(reply: str, reference: str) -> float:
    got, want = normalise(reply), normalise(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _rouge() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise LorakitError("scoring replies needs rouge-score: pip install 'lorakit[data]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def score_replies(replies: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(the mean of each metric, each reply's own scores)."""
    scorer = _rouge()
    as_json = bool(references) and all(json_object(r) is not None for r in references)
    rows: list[dict[str, Any]] = []
    for reply, reference in zip(replies, references, strict=True):
        row: dict[str, Any] = {}
        if as_json:
            want, got = json_object(reference), json_object(reply)
            assert want is not None
            row["exact_match"] = float(got == want)
            row["json_valid"] = float(got is not None)
            row["field_accuracy"] = (
                sum(1 for k, v in want.items() if k in got and got[k] == v) / len(want)
                if got is not None and want
                else float(got == want)
            )
        else:
            row["exact_match"] = float(reply.strip() == reference.strip())
        row["token_f1"] = token_f1(reply, reference)
        row["rouge_l"] = scorer.score(reference, reply)["rougeL"].fmeasure
        rows.append(row)
    keys = ["exact_match", "token_f1", "rouge_l"] + (["json_valid", "field_accuracy"] if as_json else [])
    means = {k: sum(r[k] for r in rows) / len(rows) if rows else 0.0 for k in keys}
    return means, rows
