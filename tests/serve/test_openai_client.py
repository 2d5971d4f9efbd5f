"""``lorakit serve`` driven by the official ``openai`` client, against a server on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openai
import pytest
import torch

import lorakit
from lorakit.cli import main as cli_main
from lorakit.serve.app import ServerState, create_app
from lorakit.serve.server import build_state
from tests.tiny import randomize_lora_b

MAX_NEW = 16
PROMPT = "Write a haiku about adapters."


def _save_adapter(model_dir: Path, folder: Path, seed: int, **kwargs: Any) -> Path:
    """A random adapter (non-zero B) on a fresh copy of the tiny model, so each one answers differently."""
    model, _ = lorakit.load_model(str(model_dir))
    torch.manual_seed(seed)
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **kwargs))
    randomize_lora_b(model, seed)
    with torch.no_grad():  # larger updates, so the replies differ from the base's from the first token
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(10)
    lorakit.save_adapter(model, folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import uvicorn

    root = tmp_path_factory.mktemp("adapters")
    adapters = {
        "alpha": _save_adapter(tiny_model_dir, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"),
        "beta": _save_adapter(tiny_model_dir, root / "beta", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj",
                                                                                                    "down_proj"]),
    }  # fmt: skip
    _save_adapter(tiny_model_dir, root / "gamma", 3, r=2, lora_alpha=4, target_modules="all-linear")
    state: ServerState = build_state(str(tiny_model_dir), adapters, str(root), max_batch=4, max_new_tokens=MAX_NEW,
                                     max_input_tokens=64, dtype="fp32")  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "client": openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0),
           "base": str(tiny_model_dir), "adapters": adapters, "state": state}  # fmt: skip
    uv.should_exit = True
    thread.join(timeout=10)
    state.engine.close()


def _http(url: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) of a raw request: for what the openai client cannot send."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def _chat(client: openai.OpenAI, model: str, prompt: str = PROMPT, **kwargs: Any) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_NEW, **kwargs
    )
    return reply.choices[0].message.content or ""


def _generate_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, model: str, *extra: str) -> str:
    # The test server runs in float32; so must `lorakit generate` (it would pick bf16 on a bf16-capable CPU).
    monkeypatch.setattr("lorakit.models.resolve_precision", lambda *_: None)
    capsys.readouterr()
    assert cli_main(["generate", "--model", model, "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW), *extra]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_lists_base_and_adapters(server: dict[str, Any]) -> None:
    ids = [m.id for m in server["client"].models.list().data]
    assert ids == [server["base"], "alpha", "beta"]


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_greedy_chat_equals_lorakit_generate(server: dict[str, Any], adapter: str | None, capsys, monkeypatch) -> None:
    extra = ["--adapter", str(server["adapters"][adapter])] if adapter else []
    expected = _generate_cli(capsys, monkeypatch, server["base"], *extra)
    assert _chat(server["client"], adapter or server["base"]) == expected
    assert expected  # the tiny model says something


def test_adapters_answer_differently_and_completions_work(server: dict[str, Any]) -> None:
    client = server["client"]
    replies = {m: _chat(client, m) for m in (server["base"], "alpha", "beta")}
    assert len(set(replies.values())) == 3, replies
    for model in (server["base"], "alpha"):
        done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0)
        assert done.choices[0].finish_reason in ("length", "stop")
        assert done.usage is not None and done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 5
        streamed = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0,
                                             stream=True)  # fmt: skip
        assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_streaming_equals_non_streaming(server: dict[str, Any]) -> None:
    client = server["client"]
    for kwargs in ({"temperature": 0}, {"temperature": 0.9, "top_p": 0.9, "seed": 7}):
        messages = [{"role": "user", "content": PROMPT}]
        whole = client.chat.completions.create(model="beta", messages=messages, max_tokens=MAX_NEW, **kwargs)
        chunks = client.chat.completions.create(model="beta", messages=messages, max_tokens=MAX_NEW, stream=True,
                                                **kwargs)  # fmt: skip
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content


def test_stop_sequence_cuts_the_reply(server: dict[str, Any]) -> None:
    full = _chat(server["client"], "alpha")
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = server["client"].chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_NEW, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.find(stop)]
    chunks = server["client"].chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_NEW, stop=[stop],
        stream=True,
    )  # fmt: skip
    pieces = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in chunks if c.choices]
    assert "".join(text for text, _ in pieces) == full[: full.find(stop)]  # a stop string is never half-sent
    assert pieces[-1][1] == "stop"


def test_concurrent_requests_get_their_own_adapter(server: dict[str, Any]) -> None:
    client = server["client"]
    jobs = [(m, f"{PROMPT} Number {i}.") for i, m in enumerate([server["base"], "alpha", "beta"] * 3)]
    alone = [_chat(client, m, p) for m, p in jobs]  # one at a time: a batch of one
    steps = server["state"].engine.steps
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _chat(client, *job), jobs))
    assert together == alone
    # Batched for real: 9 requests of up to 16 tokens in batches of 4 take well under 9 * 16 decode steps.
    assert server["state"].engine.steps - steps < len(jobs) * MAX_NEW * 0.75


def test_errors_are_openai_errors_and_the_server_keeps_serving(server: dict[str, Any]) -> None:
    client, url = server["client"], server["url"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _chat(client, "no-such-adapter")
    with pytest.raises(openai.BadRequestError, match="max-input-tokens"):
        _chat(client, "alpha", "word " * 200)
    with pytest.raises(openai.BadRequestError, match="max-new-tokens"):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                       temperature="hot")  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="alpha", messages=[])
    status, bad = _http(url + "/v1/chat/completions", b'{"model": "alpha", "messages": [')
    assert status == 400 and "not valid JSON" in bad["error"]["message"]
    assert _http(url + "/health") == (200, {"status": "ok", "model": server["base"], "adapters": ["alpha", "beta"]})
    assert _chat(client, "alpha")  # still serving


def test_adapters_load_and_unload_by_name_only(server: dict[str, Any]) -> None:
    client, url = server["client"], server["url"]
    with pytest.raises(openai.NotFoundError):
        _chat(client, "gamma")
    for body in ({"name": "../alpha"}, {"name": "/etc"}, {"name": "gamma", "path": "/tmp"}):
        status, answer = _http(url + "/v1/adapters/load", body)
        assert status == 400, body
        assert answer["error"]["message"]
    assert _http(url + "/v1/adapters/load", {"name": "nothere"})[0] == 404
    assert _http(url + "/v1/adapters/load", {"name": "gamma"}) == (200, {"loaded": "gamma"})
    assert "gamma" in [m.id for m in client.models.list().data]
    assert _chat(client, "gamma") != _chat(client, server["base"])
    assert _http(url + "/v1/adapters/unload", {"name": "gamma"}) == (200, {"unloaded": "gamma"})
    with pytest.raises(openai.NotFoundError):
        _chat(client, "gamma")
