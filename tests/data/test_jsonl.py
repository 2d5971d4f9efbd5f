from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.data.jsonl import read_jsonl
from lorakit.errors import DataError, LorakitError

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}


def write(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


def error_for(tmp_path: Path, *lines: str | bytes) -> DataError:
    path = write(tmp_path, *lines)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert info.value.path == str(path)
    return info.value


def test_reads_both_formats_skips_blank_lines_and_drops_extra_keys(tmp_path: Path) -> None:
    chat = {"id": 7, "messages": [{"role": "system", "content": "Be brief.", "name": "x"}, *CHAT["messages"]]}
    path = write(tmp_path, json.dumps(chat), "", "   ", json.dumps(CHAT), "")
    assert read_jsonl(str(path)) == [
        {"messages": [{"role": "system", "content": "Be brief."}, *CHAT["messages"]]},
        CHAT,
    ]
    path = write(tmp_path, json.dumps({**COMPLETION, "source": "math"}), "", json.dumps(COMPLETION))
    assert read_jsonl(str(path)) == [COMPLETION, COMPLETION]


def test_one_format_per_file(tmp_path: Path) -> None:
    """The first record sets the file's format; a record of another format is an error naming both."""
    error = error_for(tmp_path, json.dumps(CHAT), json.dumps(COMPLETION))
    assert error.line == 2
    assert "expected a chat ('messages') record" in str(error) and "detected from line 1" in str(error)
    assert "looks like completion" in str(error)


def test_accepts_crlf_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\r", json.dumps(CHAT))
    assert read_jsonl(path) == [CHAT, CHAT]


def test_empty_assistant_content_is_allowed(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "content": "Say nothing"}, {"role": "assistant", "content": ""}]}
    assert read_jsonl(write(tmp_path, json.dumps(record))) == [record]


def test_error_str_names_file_and_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, json.dumps(CHAT), "{not json")
    assert error.line == 2
    assert str(error).startswith(f"{tmp_path / 'data.jsonl'}:2: invalid JSON: ")
    assert isinstance(error, LorakitError)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"text"', "expected a JSON object, got a string"),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": {"role": "user"}}', "'messages' must be a non-empty list"),
        ('{"messages": ["hi"]}', "messages[0] must be an object, got a string"),
        ('{"messages": [{"content": "hi"}]}', "messages[0] has no 'role'"),
        ('{"messages": [{"role": "user"}]}', "messages[0] has no 'content'"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}',
            "messages[1] has role 'robot'; expected one of system, user, assistant, tool",
        ),
        ('{"messages": [{"role": "assistant", "content": 5}]}', "messages[0] content must be a string"),
        ('{"messages": [{"role": "assistant", "content": null}]}', "got null"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"prompt": "hi"}', "'prompt' but no 'completion'"),
        ('{"prompt": 1, "completion": "x"}', "'prompt' must be a string, got a number"),
        ('{"prompt": "x", "completion": ["y"]}', "'completion' must be a string, got an array"),
        ('{"prompt": "x", "completion": "y", "messages": []}', "both 'messages' and 'prompt'"),
    ],
)
def test_invalid_record_names_the_problem_and_line(tmp_path: Path, record: str, message: str) -> None:
    first = COMPLETION if record.startswith('{"prompt"') else CHAT
    error = error_for(tmp_path, json.dumps(first), "", record)
    assert error.line == 3
    assert message in str(error)


def test_unknown_keys_name_the_formats(tmp_path: Path) -> None:
    error = error_for(tmp_path, '{"question": "a", "answer": "b"}')
    assert error.line == 1
    assert "cannot tell the data format from the keys ('question', 'answer')" in str(error)


def test_malformed_json_includes_the_json_message(tmp_path: Path) -> None:
    error = error_for(tmp_path, '{"prompt": "a",}')
    assert error.line == 1
    assert "invalid JSON" in str(error) and "double quotes" in str(error)


def test_non_utf8_names_the_bad_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, json.dumps(COMPLETION), json.dumps(COMPLETION), b'{"prompt": "caf\xe9"}')
    assert error.line == 3
    assert "UTF-8" in str(error)


@pytest.mark.parametrize("lines", [(), ("",), ("", "  ", "\t")])
def test_empty_dataset(tmp_path: Path, lines: tuple[str, ...]) -> None:
    error = error_for(tmp_path, *lines)
    assert error.line is None
    assert "empty dataset" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert info.value.line is None
    assert str(info.value) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory"):
        read_jsonl(tmp_path)
