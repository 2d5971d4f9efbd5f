"""The built-in contacts data: shipped files match the generator, labels are verbatim, eval is held out."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lorakit.errors import DataError
from lorakit.tasks import contacts
from lorakit.tasks.contacts import (
    EVAL_ONLY_POOLS,
    EVAL_ONLY_TEMPLATES,
    KEYS,
    POOLS,
    SYSTEM_PROMPT,
    TEMPLATES,
    builtin_path,
    generate,
    load,
    read_records,
    reference_of,
)


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[dict[str, Any]]]:
    return {split: load(split) for split in ("train", "eval")}


@pytest.fixture(scope="module")
def with_meta() -> dict[str, list[dict[str, Any]]]:
    """The shipped examples regenerated with their template names (same seeds, so the same records)."""
    train = generate(1000, "train", with_meta=True)
    users = {user_of(r) for r in train}
    return {"train": train, "eval": generate(200, "eval", exclude=users, with_meta=True)}


def user_of(record: dict[str, Any]) -> str:
    return record["messages"][1]["content"]


def chatml(record: dict[str, Any]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in record["messages"])


def test_shipped_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    assert contacts.main(["--out", str(tmp_path)]) == 0
    for split in ("train", "eval"):
        assert (tmp_path / f"contacts_{split}.jsonl").read_bytes() == builtin_path(split).read_bytes(), (
            f"{split}: run `python -m lorakit.tasks.contacts` to regenerate the shipped files"
        )


def test_sizes(shipped: dict[str, list[dict[str, Any]]]) -> None:
    assert len(shipped["train"]) == 1000
    assert len(shipped["eval"]) == 200


def test_file_lines_hold_only_messages() -> None:
    for split in ("train", "eval"):
        raw = builtin_path(split).read_text(encoding="utf-8")
        assert raw.endswith("\n") and "\r" not in raw
        for line in raw.splitlines():
            record = json.loads(line)
            assert list(record) == ["messages"]
            assert line == json.dumps(record, ensure_ascii=False)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_record_is_a_well_formed_example(split: str, shipped: dict[str, list[dict[str, Any]]]) -> None:
    for record in shipped[split]:
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in messages)
        assert messages[0]["content"] == SYSTEM_PROMPT
        user, reply = messages[1]["content"], messages[2]["content"]
        assert not re.search(r"[{}^\x01\x02]|<<|>>|\|\||(?<=\S)  ", user), f"template syntax left in {user!r}"
        parsed = json.loads(reply)
        assert list(parsed) == list(KEYS)
        assert reply == json.dumps(parsed, ensure_ascii=False)
        assert any(v is not None for v in parsed.values())
        for key, value in parsed.items():
            assert value is None or (isinstance(value, str) and value), (key, value)
            if value is not None:
                assert value in user, f"{key}={value!r} is not verbatim in {user!r}"
        assert reference_of(record) == parsed


def test_no_user_message_is_in_both_splits_or_twice(shipped: dict[str, list[dict[str, Any]]]) -> None:
    train = [user_of(r) for r in shipped["train"]]
    evals = [user_of(r) for r in shipped["eval"]]
    assert len(set(train)) == len(train)
    assert len(set(evals)) == len(evals)
    assert not set(train) & set(evals)


def test_generate_with_meta_matches_the_shipped_records(
    shipped: dict[str, list[dict[str, Any]]], with_meta: dict[str, list[dict[str, Any]]]
) -> None:
    for split in ("train", "eval"):
        assert [{"messages": r["messages"]} for r in with_meta[split]] == shipped[split]


def test_templates_are_many_and_some_are_eval_only() -> None:
    names = [t.name for t in TEMPLATES]
    assert len(names) == len(set(names))
    assert len(names) >= 25
    assert 6 <= len(EVAL_ONLY_TEMPLATES) < len(names) / 2


def test_pools_are_disjoint_so_that_labels_are_unambiguous() -> None:
    """A first name that is also a surname, or a city inside a company name, would blur what is what."""
    for pool in ("first", "last", "company", "city", "phone", "suffix", "local", "freemail"):
        shared, held_out = set(POOLS[pool]), set(POOLS[f"{pool}/eval"])
        assert len(POOLS[pool]) == len(shared) and shared and held_out, pool
        assert not shared & held_out, pool
    firsts = set(POOLS["first"] + POOLS["first/eval"])
    lasts = set(POOLS["last"] + POOLS["last/eval"])
    assert not firsts & lasts
    words = " ".join(POOLS["company"] + POOLS["company/eval"] + tuple(firsts) + tuple(lasts))
    for city in POOLS["city"] + POOLS["city/eval"]:
        assert not re.search(rf"\b{re.escape(city)}\b", words), city
    assert all(", " not in entry for entries in POOLS.values() for entry in entries)


def test_train_never_sees_eval_only_templates_and_eval_mixes_both(
    with_meta: dict[str, list[dict[str, Any]]],
) -> None:
    train_templates = {r["meta"]["template"] for r in with_meta["train"]}
    eval_templates = [r["meta"]["template"] for r in with_meta["eval"]]
    assert not train_templates & EVAL_ONLY_TEMPLATES
    assert train_templates == {t.name for t in TEMPLATES} - EVAL_ONLY_TEMPLATES  # every shared style is used
    share = sum(name in EVAL_ONLY_TEMPLATES for name in eval_templates) / len(eval_templates)
    assert 0.3 <= share <= 0.55
    assert set(eval_templates) >= EVAL_ONLY_TEMPLATES
    for record in with_meta["eval"]:
        assert record["meta"]["eval_only"] == (record["meta"]["template"] in EVAL_ONLY_TEMPLATES)


def test_eval_only_pool_entries_never_reach_train(shipped: dict[str, list[dict[str, Any]]]) -> None:
    train_refs = [reference_of(r) for r in shipped["train"]]
    eval_refs = [reference_of(r) for r in shipped["eval"]]
    for pool, field in (("city", "city"), ("company", "company")):
        held_out = set(EVAL_ONLY_POOLS[pool])
        assert not any((ref[field] or "").startswith(tuple(held_out)) for ref in train_refs), pool
        assert any((ref[field] or "").startswith(tuple(held_out)) for ref in eval_refs), pool
    first_names = tuple(f"{n} " for n in EVAL_ONLY_POOLS["first"])
    assert not any((ref["name"] or "").startswith(first_names) for ref in train_refs)
    assert any((ref["name"] or "").startswith(first_names) for ref in eval_refs)
    train_text = "\n".join(user_of(r) for r in shipped["train"])
    for city in EVAL_ONLY_POOLS["city"]:
        assert city not in train_text


def test_nulls_and_single_detail_examples_are_common_enough(shipped: dict[str, list[dict[str, Any]]]) -> None:
    for split, records in shipped.items():
        refs = [reference_of(r) for r in records]
        with_null = sum(any(v is None for v in ref.values()) for ref in refs) / len(refs)
        assert 0.4 <= with_null <= 0.85, split
        for key in KEYS:
            present = sum(ref[key] is not None for ref in refs) / len(refs)
            assert 0.6 <= present <= 0.9, (split, key, present)
        singles = sum(sum(v is not None for v in ref.values()) == 1 for ref in refs)
        assert singles >= len(refs) * 0.02, split


def test_non_ascii_values_in_both_splits(shipped: dict[str, list[dict[str, Any]]]) -> None:
    for split, records in shipped.items():
        refs = [reference_of(r) for r in records]
        for key in ("name", "city", "company"):
            assert any((v := ref[key]) is not None and not v.isascii() for ref in refs), (split, key)


def test_phone_formats_vary(shipped: dict[str, list[dict[str, Any]]]) -> None:
    phones = [reference_of(r)["phone"] for r in shipped["train"]]
    shapes = {re.sub(r"\d", "9", p) for p in phones if p}
    assert len(shapes) >= 20
    assert any("ext" in p or " x" in p for p in phones if p)


def test_examples_stay_short(shipped: dict[str, list[dict[str, Any]]]) -> None:
    for split, records in shipped.items():
        lengths = sorted(len(chatml(r)) for r in records)
        assert lengths[int(len(lengths) * 0.99)] < 900, split
        assert lengths[-1] < 1100, split
        words = sorted(len(user_of(r).split()) for r in records)
        assert 10 <= words[len(words) // 2] <= 80, split


def test_generate_is_deterministic_and_seeded() -> None:
    assert generate(30, "train", seed=7) == generate(30, "train", seed=7)
    assert generate(30, "train", seed=7) != generate(30, "train", seed=8)
    assert generate(5, "eval") == generate(200, "eval")[:5]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_seeds_also_give_verbatim_labels(seed: int) -> None:
    for split in ("train", "eval"):
        for record in generate(150, split, seed=seed):
            ref = reference_of(record)
            assert all(v in user_of(record) for v in ref.values() if v is not None)


def test_exclude_is_respected() -> None:
    first = generate(20, "train", seed=5)
    again = generate(20, "train", seed=5, exclude={user_of(first[0])})
    assert user_of(first[0]) not in {user_of(r) for r in again}


def test_builtin_path_points_into_the_package() -> None:
    assert builtin_path("eval") == Path(contacts.__file__).parent / "builtin" / "contacts_eval.jsonl"
    with pytest.raises(ValueError):
        builtin_path("test")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('{"messages": []}\n', 1, "roles system, user, assistant"),
        ("\n{not json\n", 2, "not valid JSON"),
        ("[1, 2]\n", 1, "roles system, user, assistant"),
    ],
)
def test_bad_files_raise_data_error_with_line(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        read_records(path)
    assert caught.value.line == line
    assert caught.value.path == str(path)


def test_bad_reply_raises_data_error(tmp_path: Path, shipped: dict[str, list[dict[str, Any]]]) -> None:
    good = shipped["eval"][0]
    bad = json.loads(json.dumps(good))
    bad["messages"][2]["content"] = '{"name": "x"}'
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="exactly the keys") as caught:
        read_records(path)
    assert caught.value.line == 2


def test_empty_or_missing_file_raises_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        read_records(empty)
    with pytest.raises(DataError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")
