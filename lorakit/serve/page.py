"""The playground page at ``/`` (one self-contained HTML file: no CDN, it works offline) and what it reads beside
the OpenAI routes: the adapters (loaded and loadable), each adapter's model card and training curve (from the run
folder ``lorakit train`` wrote it in: ``lorakit.runs.folder``), and the server's load.
Those routes sit under ``/v1``, so an API key guards them as it guards generation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from lorakit.io import CONFIG_NAME
from lorakit.memory import peak_rss_mb
from lorakit.runs.folder import beside
from lorakit.serve.protocol import ApiError
from lorakit.serve.state import ServerState, adapter_name, available_adapters

PAGE = Path(__file__).parent / "page" / "index.html"
MAX_CARD_CHARS = 64_000
MAX_CURVE_POINTS = 2_000  # a longer run is thinned evenly: the page draws a curve, not every step
CONFIG_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "init_lora_weights")


def _curve(records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, loss] pairs of a run's training and evaluation records."""
    train: list[list[float]] = []
    evals: list[list[float]] = []
    for record in records:
        if not isinstance(record.get("step"), int):
            continue
        for kind, key, points in (("train", "loss", train), ("eval", "eval_loss", evals)):
            value = record.get(key)
            if record.get("kind") == kind and isinstance(value, int | float):
                points.append([record["step"], float(value)])
    stride = max(1, len(train) // MAX_CURVE_POINTS)
    return {"train": train[::stride], "eval": evals}


def adapter_info(name: str, folder: Path, loaded: bool) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    runs = beside(folder)  # the adapter's folder, or the run folder it was saved in
    card = next((text for run in runs if (text := run.read_card()) is not None), None)
    metrics = next((run.read_metrics() for run in runs if run.metrics_file.is_file()), [])
    return {
        "name": name, "loaded": loaded, "config": {k: config.get(k) for k in CONFIG_KEYS if k in config},
        "card": card[:MAX_CARD_CHARS] if card is not None else None, "curve": _curve(metrics),
    }  # fmt: skip


def _rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def add_page_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/v1/adapters")
    async def list_adapters() -> dict[str, Any]:
        """Loaded adapters, and the folders under ``--adapter-dir`` that ``/v1/load_lora_adapter`` may load."""
        return {"loaded": sorted(state.adapters), "available": available_adapters(state)}

    @app.get("/v1/adapters/{name}")
    async def adapter(name: str) -> dict[str, Any]:
        """An adapter's settings, model card (its run's README.md) and training curve (its run's metrics.jsonl)."""
        adapter_name(name, "name")
        if name in state.adapters:
            return adapter_info(name, Path(state.adapters[name]), True)
        if name in available_adapters(state):
            assert state.adapter_dir is not None
            return adapter_info(name, state.adapter_dir / name, False)
        raise ApiError(404, f"no adapter {name!r} is loaded or under --adapter-dir", "name", "model_not_found")

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        """The server's load: rows decoding and waiting, tokens so far, memory."""
        return {"model": state.base_name, "quantization": state.quantization, "engine": state.engine.load(),
                "rss_mb": _rss_mb(), "peak_rss_mb": peak_rss_mb(), "uptime_s": round(time.time() - state.started, 1),
                "adapters": len(state.adapters)}  # fmt: skip
