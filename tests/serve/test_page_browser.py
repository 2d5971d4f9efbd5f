"""The playground page in a real headless Chromium (Debian's ``chromium``, driven by Playwright's Python package
pointed at that browser; no browser download): it loads with no request leaving the server, streams one prompt
to two adapters into two columns (the same text the API gives), enforces a JSON schema when ticked, loads an
adapter from ``--adapter-dir``, and draws each adapter's training curve from its ``metrics.jsonl``.

``make test-browser`` installs chromium where it is missing and runs these; ``.ci/run`` calls it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from lorakit.serve.app import ServerState, create_app
from lorakit.serve.server import Access, build_state
from tests.serve.conftest import running, save_adapter

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs Debian's chromium: make test-browser installs it"
    ),
]

KEY = "page-key"
SCHEMA = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
          "required": ["mood", "ok"]}  # fmt: skip
PROMPT = "Say something about lighthouses."


def _run_files(folder: Path, steps: int, start: float) -> list[float]:
    """A run's metrics.jsonl (a decaying train loss, an eval every 10 steps) and model card beside an adapter."""
    losses = [round(start * math.exp(-s / 15) + 0.1, 4) for s in range(1, steps + 1)]
    records = [{"kind": "train", "step": s, "loss": loss} for s, loss in enumerate(losses, 1)]
    records += [{"kind": "eval", "step": s, "eval_loss": losses[s - 1] + 0.05} for s in range(10, steps + 1, 10)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "README.md").write_text(f"# {folder.name}\n\nA test adapter, {steps} steps.\n")
    return losses


@pytest.fixture(scope="module")
def page_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("page-adapters")
    adapters = {
        "alpha": save_adapter(tiny_model_dir, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"),
        "beta": save_adapter(tiny_model_dir, root / "beta", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    }
    steps = {"alpha": _run_files(root / "alpha", 40, 2.0), "beta": _run_files(root / "beta", 25, 3.0)}
    save_adapter(tiny_model_dir, root / "gamma", 3, r=2, target_modules="all-linear")
    state: ServerState = build_state(str(tiny_model_dir), adapters, str(root), max_batch=4, max_new_tokens=48,
                                     dtype="fp32", access=Access(KEY))  # fmt: skip
    with running(create_app(state)) as url:
        yield {"url": url, "state": state, "losses": steps}
    state.engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        yield chromium
        chromium.close()


def _expected(url: str, model: str, max_tokens: int, schema: dict[str, Any] | None = None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    extra = (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}} if schema else {}
    )
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0,
                                           max_tokens=max_tokens, **extra)  # type: ignore[arg-type]  # fmt: skip
    return reply.choices[0].message.content or ""


def test_the_page_streams_two_adapters_side_by_side(page_server: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    url = page_server["url"]
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(url) else elsewhere.append(r.url))
    page.goto(url + "/")
    assert page.title() == "lorakit playground"
    page.fill("#key", KEY)
    page.locator("#key").dispatch_event("change")
    page.wait_for_selector("#models input[value=alpha]")
    page.uncheck(f"#models input[value='{page_server['state'].base_name}']")  # the two adapters only
    page.fill("#max-tokens", "16")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    for model in ("alpha", "beta"):
        page.wait_for_selector(f".column[data-model={model}] .finish[data-finish]", timeout=60_000)
    columns = page.locator("#columns .column")
    assert [columns.nth(i).get_attribute("data-model") for i in range(columns.count())] == ["alpha", "beta"]
    answers = {}
    for model in ("alpha", "beta"):
        column = page.locator(f".column[data-model={model}]")
        answers[model] = column.locator(".answer").inner_text()
        assert answers[model] == _expected(url, model, 16)
        chunks = int(column.locator(".finish").inner_text().split(" · ")[1].split()[0])
        assert chunks > 1, "the answer arrived in pieces, as it was generated"
    assert answers["alpha"] != answers["beta"]

    # Each adapter's training curve: one point per train record, the eval points, the card.
    for model, losses in page_server["losses"].items():
        column = page.locator(f".column[data-model={model}]")
        column.locator(".curve svg polyline.train").wait_for()
        points = column.locator(".curve svg polyline.train").get_attribute("points").split()
        assert len(points) == len(losses)
        heights = [float(p.split(",")[1]) for p in points]  # SVG y grows downwards: a falling loss climbs
        assert heights == sorted(heights) and heights[0] < heights[-1]
        assert len(column.locator(".curve svg polyline.eval").get_attribute("points").split()) == len(losses) // 10
        assert f"{len(losses)} steps" in column.locator(".card").inner_text()

    # The JSON-schema toggle: every column's reply is valid JSON for the schema, as the API gives it.
    page.check("#use-schema")
    page.fill("#schema", json.dumps(SCHEMA, indent=2))
    page.fill("#max-tokens", "48")
    page.click("#send")
    for model in ("alpha", "beta"):
        column = page.locator(f".column[data-model={model}]")
        column.locator(".finish[data-finish]").wait_for(timeout=60_000)
        text = column.locator(".answer").inner_text()
        jsonschema.validate(json.loads(text), SCHEMA)
        assert text == _expected(url, model, 48, SCHEMA)
        assert "valid JSON" in column.locator(".finish").inner_text()

    # An adapter from --adapter-dir, loaded with the page's button, becomes a model to tick.
    page.click("#available button")
    page.wait_for_selector("#models input[value=gamma]")
    assert "gamma" in page_server["state"].adapters
    page.wait_for_function("document.querySelector('#status').textContent.includes('3 adapters')")  # polled each 2 s
    assert "tokens/s" in page.inner_text("#status")
    assert not elsewhere, f"the page fetched from outside the server: {elsewhere}"

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("LORAKIT_SCREENSHOT"):  # how docs/serve-playground.png is made
        shutil.copy(shot, os.environ["LORAKIT_SCREENSHOT"])
    page.close()


def test_the_page_asks_for_the_key_it_lacks(page_server: dict[str, Any], browser: Any) -> None:
    page = browser.new_page()
    page.goto(page_server["url"] + "/")
    page.wait_for_function("document.querySelector('#models').textContent.includes('401')")
    assert "Missing API key" in page.inner_text("#models")
    page.close()
