"""Random bytes and random JSON into the data loader, the train-config parser and the adapter-config reader:
each either works or raises the documented user error (a LorakitError / ValueError), never anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.config import LoraConfig
from lorakit.data.jsonl import read_jsonl
from lorakit.errors import AdapterError, LorakitError
from lorakit.io import read_adapter_config
from lorakit.train.config import TrainConfig

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
KEYS = st.sampled_from(["messages", "prompt", "completion", "role", "content", "r", "lora_alpha", "peft_type",
                        "target_modules", "bias", "lr", "max_steps", "seq-len", "rank_pattern"])  # fmt: skip
RECORD = st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=5)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(data: bytes) -> Path:
    with tempfile.NamedTemporaryFile(delete=False, suffix=".jsonl") as handle:
        handle.write(data)
    return Path(handle.name)


@FUZZ
@given(st.binary(max_size=300))
def test_data_loader_on_random_bytes(data: bytes) -> None:
    path = _write(data)
    try:
        read_jsonl(path)
    except LorakitError as err:
        assert str(path) in str(err)
    finally:
        path.unlink()


@FUZZ
@given(st.lists(RECORD | JSON, min_size=0, max_size=4))
def test_data_loader_on_random_json_lines(rows: list) -> None:
    path = _write("\n".join(json.dumps(r) for r in rows).encode())
    try:
        records = read_jsonl(path)
        assert records and all(("messages" in r) != ("prompt" in r) for r in records)
    except LorakitError as err:
        assert str(path) in str(err)
    finally:
        path.unlink()


@FUZZ
@given(st.dictionaries(KEYS | st.text(max_size=10), JSON, max_size=5))
def test_train_config_parser_on_random_json(data: dict) -> None:
    try:
        TrainConfig.from_dict(data)
    except (ValueError, TypeError) as err:  # the CLI turns both into one line
        assert str(err)


@FUZZ
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()) | RECORD.map(lambda v: json.dumps(
    {"peft_type": "LORA", **v}).encode()))  # fmt: skip
def test_adapter_config_reader_on_random_input(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "adapter_config.json").write_bytes(data)
        try:
            assert isinstance(read_adapter_config(Path(folder)), LoraConfig)
        except AdapterError as err:
            assert "adapter_config.json" in str(err)
