"""``lorakit.serve.grammar`` on the built-in tokenizer: json_object means an object (not any JSON value), a schema's
property order is kept, and the per-row masks touch only the constrained rows."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from lorakit.serve.grammar import Grammars, mask_logits, matcher

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["happy", "sad"]}},
          "required": ["ok", "mood"]}  # fmt: skip


@pytest.fixture(scope="module")
def grammars(smollm2_tokenizer: Any) -> Grammars:
    return Grammars(smollm2_tokenizer, len(smollm2_tokenizer))


def _accepts(grammars: Grammars, schema: dict[str, Any] | None, text: str, stop: int) -> bool:
    """Whether the grammar takes all of ``text`` and then ends (``stop`` accepted)."""
    m = matcher(grammars.compile(schema), [stop])
    return bool(m.accept_string(text)) and bool(m.accept_token(stop)) and m.is_terminated()


def test_json_object_is_an_object_and_a_schema_keeps_its_order(grammars: Grammars, smollm2_tokenizer: Any) -> None:
    stop = smollm2_tokenizer.eos_token_id
    assert _accepts(grammars, None, '{"a": [1, {"b": null}], "c": "d"}', stop)
    for not_an_object in ("[1, 2]", '"text"', "3", "null"):
        assert not _accepts(grammars, None, not_an_object, stop), not_an_object
    assert _accepts(grammars, SCHEMA, json.dumps({"ok": True, "mood": "sad"}), stop)
    for wrong in ({"mood": "sad", "ok": True}, {"ok": True}, {"ok": "yes", "mood": "sad"},
                  {"ok": True, "mood": "angry"}, {"ok": True, "mood": "sad", "extra": 1}):  # fmt: skip
        assert not _accepts(grammars, SCHEMA, json.dumps(wrong), stop), wrong
    with pytest.raises(ValueError):
        grammars.compile({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})


def test_masks_touch_only_constrained_rows(grammars: Grammars, smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    stop = tok.eos_token_id
    rows = [matcher(grammars.compile(SCHEMA), [stop]), None, matcher(grammars.compile(None), [stop])]
    logits = torch.randn(3, len(tok), generator=torch.Generator().manual_seed(0))  # (3, vocab)
    before = logits.clone()
    mask_logits(logits, rows)
    assert torch.equal(logits[1], before[1])  # a free row in the same batch is untouched
    brace, word = tok.convert_tokens_to_ids("{"), tok("hello", add_special_tokens=False)["input_ids"][0]
    for row in (0, 2):
        allowed = torch.isfinite(logits[row])
        assert torch.equal(logits[row][allowed], before[row][allowed])  # kept tokens keep their logits
        assert allowed[brace] and not allowed[word] and not allowed[stop]
        texts = [tok.decode([t]) for t in allowed.nonzero()[:, 0].tolist()]
        assert all(t.lstrip().startswith("{") for t in texts), texts  # nothing but an object may begin
