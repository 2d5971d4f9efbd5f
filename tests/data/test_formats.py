"""Every accepted record format and file type, on small hand-made files; OpenAI's per-message weight and tool calls
rendered through the real SmolLM2 tokenizer (and a tool-aware ChatML template written here)."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorakit.data.jsonl import read_jsonl, validate_records
from lorakit.data.sources import read_data
from lorakit.data.tokenize import IGNORE_INDEX, tokenize_example
from lorakit.errors import DataError, LorakitError

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
ALPACA_EXPECTED = {
    "messages": [
        {"role": "user", "content": "Translate to French\n\ncheese"},
        {"role": "assistant", "content": "fromage"},
    ]
}


def write_jsonl(path: Path, *records: Any) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def labelled_text(tokenizer: Any, example: Any) -> list[str]:
    """The labelled stretches of an example, decoded (special tokens kept)."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return [tokenizer.decode(s) for s in spans]


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("record", "expected", "detected"),
    [
        (CHAT, CHAT, "chat"),
        ({"prompt": "2+2=", "completion": "4", "id": 1}, {"prompt": "2+2=", "completion": "4"}, "completion"),
        ({"text": "Once upon a time.", "meta": "x"}, {"text": "Once upon a time."}, "text"),
        (
            {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello!"}]},
            {"messages": [{"role": "system", "content": "Be kind."}, *CHAT["messages"]]},
            "sharegpt",
        ),
        ({"instruction": "Translate to French", "input": "cheese", "output": "fromage", "text": "ignored"},
         ALPACA_EXPECTED, "alpaca"),
        (
            {"instruction": "Say hi", "input": "", "output": "Hello!", "system": "Be kind."},
            {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi"},
                          {"role": "assistant", "content": "Hello!"}]},
            "alpaca",
        ),
        (
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]},
            CHAT,
            "completion",
        ),
    ],
)  # fmt: skip
def test_each_format_is_detected_and_converted(tmp_path: Path, record: dict, expected: dict, detected: str) -> None:
    read = read_data(write_jsonl(tmp_path / "d.jsonl", record, record))
    assert read.data_format == detected and read.detected
    assert read.records == [expected, expected]


def test_a_forced_format_refuses_records_of_another(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", {"instruction": "a", "output": "b", "text": "a b"})
    assert read_data(path, "text").records == [{"text": "a b"}]  # forced: the text column, not the Alpaca fields
    with pytest.raises(DataError, match=r"d.jsonl:1: expected a chat \('messages'\) record.*as forced"):
        read_data(path, "chat")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"conversations": [{"from": "alien", "value": "x"}]}, "is from 'alien'"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "no assistant message"),
        ({"instruction": "a"}, "has no 'output'"),
        ({"instruction": "a", "output": 3}, "'output' must be a string, got a number"),
        ({"text": ""}, "'text' is empty"),
        ({"prompt": [{"role": "user", "content": "a"}], "completion": 5}, "'completion' must be a non-empty list"),
    ],
)
def test_format_errors_name_the_line(tmp_path: Path, record: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        read_data(write_jsonl(tmp_path / "d.jsonl", record))
    assert info.value.line == 1


# ------------------------------------------------------------------------- OpenAI's format: weight, tools


def test_openai_weight_zero_is_context_not_target(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    turns = [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Lyon.", "weight": 0}, {"role": "user", "content": "Wrong. Again?"},
        {"role": "assistant", "content": "Paris.", "weight": 1},
    ]  # fmt: skip
    (record,) = validate_records([{"messages": turns}])
    assert record["messages"][2]["weight"] == 0 and "weight" not in record["messages"][4]
    example, _ = tokenize_example(tok, record, 4096)
    unweighted, _ = tokenize_example(tok, {"messages": [{k: v for k, v in t.items() if k != "weight"} for t in turns]},
                                     4096)  # fmt: skip
    assert example is not None and unweighted is not None
    assert example.input_ids == unweighted.input_ids  # the weight changes what is learnt, not the text
    assert labelled_text(tok, unweighted) == ["Lyon.<|im_end|>", "Paris.<|im_end|>"]
    assert labelled_text(tok, example) == ["Paris.<|im_end|>"]


@pytest.mark.parametrize(
    ("weight", "message"), [(2, "must be 0 or 1, got 2"), (0, "every assistant message has weight 0")]
)
def test_openai_weight_errors(weight: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_records([{"messages": [{"role": "user", "content": "a"},
                                        {"role": "assistant", "content": "b", "weight": weight}]}])  # fmt: skip


TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_RECORD = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}  # fmt: skip


def test_openai_tool_calls_render_through_a_template_that_supports_tools(smollm2_tokenizer: Any) -> None:
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    (record,) = validate_records([TOOL_RECORD])
    call = record["messages"][1]["tool_calls"][0]
    assert call["function"]["arguments"] == {"city": "Paris"}  # OpenAI's JSON string, decoded as templates expect
    example, _ = tokenize_example(tok, record, 4096)
    assert example is not None
    text = tok.decode(example.input_ids)
    assert text.startswith('<|im_start|>system\nTools: [{"type": "function"')  # the tools reached the template
    assert labelled_text(tok, example) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "21 degrees.<|im_end|>",
    ]  # the call is learnt, the tool's result is not


def test_tool_calls_with_a_template_that_drops_them_is_one_line_naming_the_record(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    from lorakit.data.dataset import tokenize_data

    path = write_jsonl(tmp_path / "tools.jsonl", CHAT, TOOL_RECORD)
    with pytest.raises(LorakitError) as info:
        tokenize_data(smollm2_tokenizer, path, 512)  # SmolLM2's template has no tool support
    assert str(info.value).startswith(f"{path}: record 2: has tool calls, but this tokenizer's chat template")
    assert "\n" not in str(info.value)


def test_text_records_learn_every_token(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    example, _ = tokenize_example(tok, {"text": "Once upon a time."}, 4096)
    assert example is not None
    ids = tok("Once upon a time.", add_special_tokens=False)["input_ids"]
    assert example.input_ids == [*ids, tok.eos_token_id]  # SmolLM2 adds no bos
    assert example.labels == example.input_ids


# ----------------------------------------------------------------------------------------------- file types

ROWS = [
    {"instruction": "Translate to French", "input": "cheese", "output": "fromage"},
    {"instruction": "Translate to French", "input": "cheese", "output": "fromage"},
]


def test_json_array_and_data_object_and_jsonl_named_json(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps(ROWS, indent=2))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS, "version": 1}))
    lines = write_jsonl(tmp_path / "lines.json", *ROWS)
    for path in (array, wrapped, lines):
        assert read_data(path).records == [ALPACA_EXPECTED, ALPACA_EXPECTED], path
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([ROWS[0], {"instruction": "x"}]))
    with pytest.raises(DataError, match=r"bad.json: record 2: .*no 'output'"):
        read_data(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"instruction": "x",}\n]')
    with pytest.raises(DataError, match=r"broken.json:2: invalid JSON"):
        read_data(broken)


def test_csv_every_cell_is_text_and_json_cells_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion"])
        writer.writerow(["2+2=", "4"])  # "4" stays text, not a number
        writer.writerow(["Say hi,\nplease", '{"greeting": "hi"}'])  # a JSON reply stays text too
    assert read_data(path).records == [
        {"prompt": "2+2=", "completion": "4"},
        {"prompt": "Say hi,\nplease", "completion": '{"greeting": "hi"}'},
    ]
    chat_csv = tmp_path / "chat.csv"
    with open(chat_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(CHAT["messages"])])
        writer.writerow(['[{"role": "user", "content": "only a question"}]'])
    with pytest.raises(DataError, match=r"chat.csv: row 2: conversation has no assistant message"):
        read_data(chat_csv)


def test_parquet_with_nested_messages(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    weighted = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                             {"role": "user", "content": "c"},
                             {"role": "assistant", "content": "d", "weight": 1}]}  # fmt: skip
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([CHAT, weighted]), path)  # Arrow fills a missing "weight" with null
    records = read_data(path).records
    assert records[0] == CHAT
    assert records[1]["messages"][1] == {"role": "assistant", "content": "b", "weight": 0}


def test_save_to_disk_folder_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]), "test": datasets.Dataset.from_list(ROWS)}
                         ).save_to_disk(str(tmp_path / "dict"))  # fmt: skip
    assert read_data(tmp_path / "one").records == [ALPACA_EXPECTED] * 2
    assert read_data(tmp_path / "dict").records == [ALPACA_EXPECTED]  # the train split
    with pytest.raises(DataError, match="is a directory"):
        read_data(tmp_path)


def test_jsonl_helper_keeps_its_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no such file"):
        read_data(str(tmp_path / "missing.csv"))


def test_a_hub_name_without_network_is_one_line(tmp_path: Path) -> None:
    """The CLI finds the Hub unreachable, turns datasets' offline mode on, and the error is one line (no retries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: nothing to fall back on
    done = subprocess.run(
        [sys.executable, "-m", "lorakit", "train", "--data", "someone/no-such-dataset", "--output", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("lorakit: error: someone/no-such-dataset: not a local file, and the Hugging Face Hub")
    assert "offline" in lines[-1]
