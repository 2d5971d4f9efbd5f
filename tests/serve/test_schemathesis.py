"""The server fuzzed from its own OpenAPI schema by schemathesis (a tool we did not write): bodies that follow the
schema and bodies that break it, on every route. No answer may be a 5xx, none may hang, and the server still
answers afterwards. (Driven through schemathesis's hypothesis strategies: its pytest loader,
``schemathesis.pytest.from_fixture``, fails under pytest 9.2, which dropped ``Function._nodeid``.)
Example counts are bounded so the run fits the default suite (the tiny model generates a handful of tokens per
request)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from lorakit.serve.app import ServerState, create_app
from lorakit.serve.server import Access, build_state
from tests.serve.conftest import running, save_adapter

KEY = "fuzz-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 60  # a request unanswered by then counts as a hung connection
MODELS: list[str] = []
EXAMPLES = 25  # per route and mode


@pytest.fixture(scope="module")
def fuzzed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz-adapters")
    adapters = {"alpha": save_adapter(tiny_model_dir, root / "alpha", 1, r=4, target_modules="all-linear")}
    save_adapter(tiny_model_dir, root / "gamma", 2, r=2, target_modules=["q_proj", "v_proj"])
    access = Access(KEY, max_request_bytes=1 << 16)
    state: ServerState = build_state(str(tiny_model_dir), adapters, str(root), max_batch=8, max_new_tokens=4,
                                     max_input_tokens=64, dtype="fp32", access=access)  # fmt: skip
    MODELS[:] = [state.base_name, "alpha"]
    with running(create_app(state)) as url:
        yield {"url": url, "state": state}
    state.engine.close()


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=HEADERS, timeout=30)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_no_hung_connections(fuzzed: dict[str, Any], mode: GenerationMode) -> None:
    """Each route, with bodies, paths and parameters drawn by schemathesis from the schema (``mode``: following it or
    breaking it)."""
    operations = _operations(fuzzed["url"])
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter",
                                               "/v1/unload_lora_adapter", "/v1/adapters/{name}"}  # fmt: skip
    statuses: list[tuple[str, int]] = []
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # nothing to break: no body, and a path's {name} takes any string

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # fmt: skip
        def fuzz(case: Any) -> None:
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
                # A random model name is a 404 before anything runs: name a served model, so generation is fuzzed.
                case.body["model"] = MODELS[len(case.body["model"]) % len(MODELS)]
            answer = case.call_and_validate(base_url=fuzzed["url"], headers=HEADERS, checks=[not_a_server_error],
                                            timeout=TIMEOUT_S)  # fmt: skip
            statuses.append((case.operation.path, answer.status_code))

        fuzz()
    assert len(statuses) >= 4 * 5  # the strategies did produce cases (the 4 routes with bodies at least)
    if mode == GenerationMode.POSITIVE:  # and some reached the engine and generated
        for path in ("/v1/chat/completions", "/v1/completions"):
            assert (path, 200) in statuses, sorted(set(statuses))


def test_the_server_still_answers_after_fuzzing(fuzzed: dict[str, Any]) -> None:
    """Runs after the fuzzing above (pytest keeps a module's order): the engine and the routes are intact."""
    assert requests.get(fuzzed["url"] + "/health", timeout=10).json()["status"] == "ok"
    body = {"model": "alpha", "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 3,
            "temperature": 0}  # fmt: skip
    reply = requests.post(fuzzed["url"] + "/v1/chat/completions", headers=HEADERS, timeout=TIMEOUT_S, json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] in ("length", "stop")
    # Nothing left stuck in the batch. The engine's loop retires a finished request just after its reply is sent,
    # so a loaded machine may still count the last one for a moment: a stuck request would stay.
    deadline = time.monotonic() + 10
    while True:
        engine = requests.get(fuzzed["url"] + "/v1/status", headers=HEADERS, timeout=10).json()["engine"]
        if (engine["running"], engine["waiting"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert engine["running"] == 0 and engine["waiting"] == 0, engine
