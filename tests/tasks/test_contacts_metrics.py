"""The contacts metric on hand-made replies: what counts as valid JSON, and how fields are compared."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.tasks.contacts import KEYS
from lorakit.tasks.contacts_metrics import parse_reply, score_all, score_reply

REF: dict[str, str | None] = {
    "name": "Zoë Łukasiewicz",
    "email": "zoe.l@blue-fern.io",
    "phone": "+44 20 7946 0958",
    "company": "Blue Fern Analytics",
    "city": None,
}
EXACT = json.dumps(REF, ensure_ascii=False)
INVALID = {"json_valid": 0.0, "exact_match": 0.0, "field_accuracy": 0.0}


def with_changes(**changes: object) -> str:
    return json.dumps({**REF, **changes}, ensure_ascii=False)


def test_valid_and_exact() -> None:
    assert score_reply(EXACT, REF) == {"json_valid": 1.0, "exact_match": 1.0, "field_accuracy": 1.0}


def test_keys_in_another_order_are_fine() -> None:
    reply = json.dumps({k: REF[k] for k in reversed(KEYS)}, ensure_ascii=False)
    assert score_reply(reply, REF)["exact_match"] == 1.0


def test_one_wrong_field() -> None:
    assert score_reply(with_changes(company="Blue Fern"), REF) == {
        "json_valid": 1.0,
        "exact_match": 0.0,
        "field_accuracy": pytest.approx(0.8),
    }


def test_all_fields_wrong_is_still_valid_json() -> None:
    reply = json.dumps(dict.fromkeys(KEYS, "x"))
    assert score_reply(reply, REF) == {"json_valid": 1.0, "exact_match": 0.0, "field_accuracy": 0.0}


@pytest.mark.parametrize(
    "reply",
    [
        with_changes(country="UK"),  # extra key
        json.dumps({("full_name" if k == "name" else k): v for k, v in REF.items()}),  # renamed key
        json.dumps({k: v for k, v in REF.items() if k != "city"}),  # missing key
        "{}",
        '{"name": "Zoë Łukasiewicz", "name": "Zoë Łukasiewicz", "email": "zoe.l@blue-fern.io", '
        '"phone": "+44 20 7946 0958", "company": "Blue Fern Analytics"}',  # five keys, one of them twice
    ],
    ids=["extra-key", "renamed-key", "missing-key", "empty-object", "duplicate-key"],
)
def test_wrong_key_set_is_invalid(reply: str) -> None:
    assert score_reply(reply, REF) == INVALID


def test_duplicate_key_is_invalid_even_with_all_keys() -> None:
    reply = EXACT[:-1] + ', "city": null}'
    assert score_reply(reply, REF) == INVALID


@pytest.mark.parametrize(
    "reply",
    [
        f"```json\n{EXACT}\n```",
        f"```\n{EXACT}\n```",
        f"Here are the details: {EXACT}",
        f"{EXACT}\nLet me know if you need anything else.",
        f"[{EXACT}]",
        '["Zoë Łukasiewicz", "zoe.l@blue-fern.io"]',
        "null",
        '"just a string"',
        "",
        "   ",
        EXACT[:-1],  # truncated, e.g. by the generation length limit
        EXACT.replace('"', "'"),  # Python dict syntax, not JSON
        EXACT + EXACT,
    ],
    ids=[
        "json-fence",
        "plain-fence",
        "prose-before",
        "prose-after",
        "list-of-object",
        "list",
        "null",
        "string",
        "empty",
        "blank",
        "truncated",
        "single-quotes",
        "two-objects",
    ],
)
def test_anything_but_a_bare_object_is_invalid(reply: str) -> None:
    assert score_reply(reply, REF) == INVALID


def test_surrounding_whitespace_is_accepted() -> None:
    assert score_reply(f"\n  {EXACT} \n\n", REF)["exact_match"] == 1.0
    pretty = json.dumps(REF, ensure_ascii=False, indent=2)
    assert score_reply(pretty, REF)["exact_match"] == 1.0


def test_non_ascii_values_are_compared_exactly() -> None:
    escaped = json.dumps(REF)  # "Zo\u00eb ..." parses to the same string
    assert "\\u00eb" in escaped
    assert score_reply(escaped, REF)["exact_match"] == 1.0
    assert score_reply(with_changes(name="Zoe Lukasiewicz"), REF)["field_accuracy"] == pytest.approx(0.8)
    decomposed = "Zoe\u0308 Łukasiewicz"  # the same letters in Unicode NFD: not normalised, so wrong
    assert score_reply(with_changes(name=decomposed), REF)["exact_match"] == 0.0
    assert score_reply(with_changes(name="zoë łukasiewicz"), REF)["exact_match"] == 0.0  # case matters


def test_null_is_not_the_string_null() -> None:
    assert score_reply(with_changes(city="null"), REF)["field_accuracy"] == pytest.approx(0.8)
    assert score_reply(with_changes(city=""), REF)["field_accuracy"] == pytest.approx(0.8)
    assert score_reply(with_changes(company=None), REF)["field_accuracy"] == pytest.approx(0.8)


def test_numbers_are_not_strings() -> None:
    ref = {**REF, "phone": "123"}
    assert score_reply(with_changes(phone=123), ref)["field_accuracy"] == pytest.approx(0.8)
    assert score_reply(with_changes(phone="123"), ref)["exact_match"] == 1.0
    assert score_reply(with_changes(phone=["123"]), ref)["exact_match"] == 0.0
    assert score_reply(with_changes(city=False), REF)["exact_match"] == 0.0


def test_parse_reply() -> None:
    assert parse_reply(f" {EXACT} ") == REF
    assert parse_reply(f"```{EXACT}```") is None


def test_reference_with_wrong_keys_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="exactly the keys"):
        score_reply(EXACT, {"name": "Zoë Łukasiewicz"})


def test_score_all_means_by_hand() -> None:
    fenced = f"```json\n{EXACT}\n```"
    replies = [EXACT, with_changes(company="Blue Fern"), fenced, with_changes(city="x", name=None)]
    result = score_all(replies, [REF] * 4)
    assert result["n"] == 4
    assert result["json_valid"] == pytest.approx(3 / 4)
    assert result["exact_match"] == pytest.approx(1 / 4)
    assert result["field_accuracy"] == pytest.approx((1.0 + 0.8 + 0.0 + 0.6) / 4)
    assert set(result) == {"n", "json_valid", "exact_match", "field_accuracy"}


def test_score_all_rejects_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="2 replies but 1 references"):
        score_all([EXACT, EXACT], [REF])
    with pytest.raises(ValueError, match="nothing to score"):
        score_all([], [])


details = st.one_of(st.none(), st.text(max_size=30))


@settings(deadline=None)
@given(st.fixed_dictionaries({k: details for k in KEYS}), st.booleans())
def test_any_reference_as_json_is_an_exact_match(reference: dict[str, str | None], escape: bool) -> None:
    reply = json.dumps(reference, ensure_ascii=escape)
    assert score_reply(reply, reference) == {"json_valid": 1.0, "exact_match": 1.0, "field_accuracy": 1.0}
