"""Evaluation results for people and programs: a markdown table of metrics, a JSON file of every prediction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.files import write_text_atomic


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of metrics as a markdown table (floats to 3 decimals): readable in a terminal and in a model card."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
