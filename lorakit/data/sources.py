"""Where training data comes from: a file (.jsonl, .json, .csv, .parquet), a folder written by
``datasets.save_to_disk``, or a dataset on the Hugging Face Hub; every source gives rows for ``convert_rows``.

JSON and JSONL are read here (their errors name the line); tables and Arrow data are read with ``pyarrow`` and
``datasets``, which are optional (``pip install 'lorakit[data]'``) and imported on first use. A table's rows are
numbered from 1, the header not counted. Cells that hold JSON text (a CSV column ``messages``) are decoded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lorakit.data.formats import DataFormat, Where
from lorakit.data.jsonl import Records, Rows, convert_rows, jsonl_rows
from lorakit.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")  # owner/name, optionally :split
JSON_COLUMNS = ("messages", "conversations", "tools", "history")  # list-valued columns a CSV holds as JSON text


def read_data(source: str | os.PathLike[str], data_format: DataFormat | str = "auto") -> Records:
    """The checked records of ``source`` (a file, a ``save_to_disk`` folder or a Hub dataset ``owner/name[:split]``)
    in ``data_format`` ("auto": the one the first record's keys say)."""
    name = os.fspath(source)
    return convert_rows(read_rows(name), name, data_format)


def read_rows(source: str) -> Rows:
    """The raw rows of ``source``, each with where it is."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return _disk_rows(path, source)
        raise DataError(source, "is a directory, expected a data file or a folder written by datasets' save_to_disk")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return _table_rows(path, source)
        if suffix == ".json":
            return _json_rows(path, source)
        return jsonl_rows(path)  # .jsonl, and any other name: one JSON object a line
    if looks_like_hub_name(source):
        return _hub_rows(source)
    raise DataError(source, "no such file")


def looks_like_hub_name(source: str) -> bool:
    """``owner/name`` (or ``owner/name:split``) that is no local path and has no data file suffix."""
    return (
        bool(HUB_NAME.match(source))
        and "/" in source
        and not Path(source).expanduser().exists()
        and not source.lower().endswith((*JSON_SUFFIXES, *TABLE_SUFFIXES))
    )


def _json_rows(path: Path, source: str) -> Rows:
    """A JSON array of records, or ``{"data": [...]}``; a .json file that holds JSON Lines is read as such."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(source, f"not valid UTF-8 (byte {exc.start + 1})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return jsonl_rows(path)  # JSON Lines under a .json name, as many datasets are published
        raise DataError(source, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from exc
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(source, 'expected an array of records, or {"data": [...]}, got an object without "data"')
    return [(v, Where(source, n, "record")) for n, v in enumerate(value, start=1)]


def _table_rows(path: Path, source: str) -> Rows:
    """CSV (every cell read as text) or Parquet, through pyarrow."""
    pa = _optional("pyarrow", source)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pa_csv

            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
            names = pa_csv.open_csv(path, parse_options=parse).schema.names
            strings = pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)
            table = pa_csv.read_csv(path, parse_options=parse, convert_options=strings)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(source, f"cannot read this {path.suffix} file ({exc})") from None
    return _rows_of_table(table.to_pylist(), source)


def _disk_rows(path: Path, source: str) -> Rows:
    datasets = _optional("datasets", source)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(source, f"cannot read this save_to_disk folder ({exc})") from None
    return _rows_of_table(list(_one_split(loaded, source, "train")), source)


def _hub_rows(source: str) -> Rows:
    """``owner/name[:split]`` from the Hub (or the local Hub cache when offline); split "train" by default."""
    datasets = _optional("datasets", source)
    name, _, split = source.partition(":")
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    try:
        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # the Hub's errors have no common base: connection, not found, gated, bad split
        text = str(exc).split("\n")[0]
        if offline or "OfflineModeIsEnabled" in text or isinstance(exc, ConnectionError):
            raise DataError(
                source,
                "not a local file, and the Hugging Face Hub cannot be reached (offline): download the "
                "dataset where there is a network and pass the file or save_to_disk folder",
            ) from None
        raise DataError(source, f"not a local file, and the Hugging Face Hub could not provide it ({text})") from None
    return _rows_of_table(list(loaded), source)


def _one_split(loaded: Any, source: str, split: str) -> Any:
    """A ``DatasetDict``'s ``split`` (or its only split); a ``Dataset`` as it is."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    if split in splits:
        return loaded[split]
    if len(splits) == 1:
        return loaded[splits[0]]
    raise DataError(source, f"holds the splits {', '.join(splits)} and none is named {split!r}")


def _rows_of_table(rows: list[dict], source: str) -> Rows:
    """Table rows as records. Arrow gives every struct all the keys of its column, null where a record had none
    (a message without ``weight``): those nulls are dropped, from the row and from each message."""
    out: Rows = []
    for number, full_row in enumerate(rows, start=1):
        row = {
            k: _without_nulls(v) if k in ("messages", "conversations") else v
            for k, v in full_row.items()
            if v is not None
        }
        for key in JSON_COLUMNS:  # a CSV cell holding a list or object written as JSON text
            cell = row.get(key)
            if isinstance(cell, str) and cell.lstrip().startswith(("[", "{")):
                try:
                    row[key] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    raise Where(source, number, "row").error(f"column {key!r} is not valid JSON ({exc.msg})") from exc
        out.append((row, Where(source, number, "row")))
    return out


def _without_nulls(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in value]


def _optional(module: str, source: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(source, f"reading this needs {module}: pip install 'lorakit[data]'") from None
