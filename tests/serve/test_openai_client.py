"""``lorakit serve`` driven by the official ``openai`` client, against a server on a free loopback port."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import jsonschema
import openai
import pytest
import torch

import lorakit
from lorakit.cli import main as cli_main
from lorakit.eval.generate import prompt_ids
from lorakit.serve.app import ServerState, create_app
from lorakit.serve.server import Access, build_state
from tests.serve.conftest import running, save_adapter

MAX_NEW = 16  # what the tests ask for
SERVER_MAX_NEW = 96  # what the server allows: room for a constrained JSON reply
PROMPT = "Write a haiku about adapters."
KEY = "sk-test-" + "k" * 24
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("adapters")
    adapters = {
        "alpha": save_adapter(tiny_model_dir, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"),
        "beta": save_adapter(tiny_model_dir, root / "beta", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj",
                                                                                                   "down_proj"]),
    }  # fmt: skip
    save_adapter(tiny_model_dir, root / "gamma", 3, r=2, lora_alpha=4, target_modules="all-linear")
    qlora = save_adapter(
        tiny_model_dir, root / "qlora-run" / "adapter", 4, r=2, lora_alpha=4, target_modules="all-linear"
    )
    (qlora.parent / "train_config.json").write_text(json.dumps({"method": "qlora", "bits": 4}))
    access = Access(KEY, max_request_bytes=BODY_LIMIT)
    state: ServerState = build_state(str(tiny_model_dir), adapters, str(root), max_batch=4,
                                     max_new_tokens=SERVER_MAX_NEW, max_input_tokens=64, dtype="fp32",
                                     access=access)  # fmt: skip
    with running(create_app(state)) as url:
        yield {"url": url, "client": openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0),
               "base": str(tiny_model_dir), "adapters": adapters, "state": state, "root": root}  # fmt: skip
    state.engine.close()


def _http(url: str, body: dict[str, Any] | bytes | None = None, key: str | None = KEY,
          headers: dict[str, str] | None = None, method: str | None = None) -> tuple[int, Any]:  # fmt: skip
    """(status, decoded JSON or text) of a raw request: for what the openai client cannot send."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {key}"} if key else {}),
        **(headers or {}),
    }
    request = Request(url, data=data, headers=sent, method=method)
    try:
        with urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def _chat(client: openai.OpenAI, model: str, prompt: str = PROMPT, **kwargs: Any) -> str:
    settings = {"temperature": 0, "max_tokens": MAX_NEW, **kwargs}
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **settings)
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


def test_vllm_adapter_endpoints_load_only_inside_the_adapter_dir(server: dict[str, Any], tmp_path: Path) -> None:
    client, url, root = server["client"], server["url"], server["root"]
    with pytest.raises(openai.NotFoundError):
        _chat(client, "gamma")
    outside = save_adapter(Path(server["base"]), tmp_path / "outside", 5, r=2, target_modules="all-linear")
    (root / "link").symlink_to(outside, target_is_directory=True)
    refused = [
        ({"lora_name": "g", "lora_path": "../" + outside.parent.name}, 400, "inside the server's --adapter-dir"),
        ({"lora_name": "g", "lora_path": str(outside)}, 400, "inside the server's --adapter-dir"),
        ({"lora_name": "g", "lora_path": "link"}, 400, "inside the server's --adapter-dir"),  # a link out of it
        ({"lora_name": "g", "lora_path": "gamma/../../x"}, 400, "inside the server's --adapter-dir"),
        ({"lora_name": "g", "lora_path": "."}, 400, "inside the server's --adapter-dir"),
        ({"lora_name": "../g", "lora_path": "gamma"}, 400, "not an adapter name"),
        ({"lora_name": "g", "lora_path": "nothere"}, 404, "no such adapter folder"),
        ({"lora_name": "g", "lora_path": "gamma", "base_model_name": "x"}, 400, "does not implement"),
        ({"name": "gamma"}, 400, "lora_name"),
        ({"lora_name": "alpha", "lora_path": "gamma"}, 409, "already loaded"),
    ]
    for body, status, message in refused:
        got = _http(url + "/v1/load_lora_adapter", body)
        assert got[0] == status and message in got[1]["error"]["message"], (body, got)
    assert _http(url + "/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": "gamma"}) == (
        200, "Success: LoRA adapter 'gamma' added successfully.")  # fmt: skip
    assert _http(url + "/v1/load_lora_adapter", {"lora_name": "gamma2", "lora_path": str(root / "gamma")})[0] == 200
    assert {"gamma", "gamma2"} <= {m.id for m in client.models.list().data}
    assert _chat(client, "gamma") == _chat(client, "gamma2") != _chat(client, server["base"])
    for name in ("gamma", "gamma2"):
        assert _http(url + "/v1/unload_lora_adapter", {"lora_name": name}) == (
            200, f"Success: LoRA adapter '{name}' removed successfully.")  # fmt: skip
    assert _http(url + "/v1/unload_lora_adapter", {"lora_name": "gamma"})[0] == 404
    with pytest.raises(openai.NotFoundError):
        _chat(client, "gamma")


def test_an_adapter_trained_on_another_kind_of_base_is_refused(server: dict[str, Any]) -> None:
    status, body = _http(server["url"] + "/v1/load_lora_adapter", {"lora_name": "q", "lora_path": "qlora-run/adapter"})
    assert status == 400
    assert body["error"]["message"] == ("adapter 'q' was trained on a nf4 base and this server's base is float: serve "
                                        "it from a server started with --quantize nf4")  # fmt: skip
    assert "q" not in server["state"].adapters


def test_every_v1_route_needs_the_key_in_openai_error_shape(server: dict[str, Any]) -> None:
    url = server["url"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        _chat(client, server["base"])
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    for key in (None, "wrong-key", KEY[:-1]):  # no header, a wrong key, a prefix of the key
        for path, body in [("/v1/models", None), ("/v1/adapters", None), ("/v1/status", None),
                           ("/v1/adapters/alpha", None), ("/v1/completions", {"model": "alpha", "prompt": "x"}),
                           ("/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": "gamma"})]:  # fmt: skip
            status, answer = _http(url + path, body, key=key)
            assert status == 401, path
            assert set(answer["error"]) == {"message", "type", "param", "code"}
            assert answer["error"]["code"] == "invalid_api_key" and answer["error"]["type"] == "invalid_request_error"
    assert "gamma" not in server["state"].adapters  # the unauthenticated load did nothing
    assert _http(url + "/health", key=None)[0] == 200  # liveness, the page and the API's schema stay public
    assert _http(url + "/openapi.json", key=None)[0] == 200
    status, page = _http(url + "/", key=None)
    assert status == 200 and "lorakit playground" in page


def test_fields_the_server_does_not_implement_are_400s_naming_them(server: dict[str, Any]) -> None:
    client = server["client"]
    messages = [{"role": "user", "content": "hi"}]
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools: this server does not"),
        ({"logit_bias": {"5": 1}}, "logit_bias: this server does not implement"),
        ({"extra_body": {"guided_json": {"type": "object"}}}, "guided_json: this server does not implement"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"top_logprobs": 2}, "top_logprobs: only allowed when logprobs is true"),
        ({"stream_options": {"include_usage": True}}, "stream_options: only allowed when stream is true"),
        ({"n": 9}, "n: Input should be less than or equal to 8"),
    ]
    for kwargs, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model="alpha", messages=messages, max_tokens=2, **kwargs)
    with pytest.raises(openai.BadRequestError, match="messages.0.name: this server does not implement"):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi", "name": "bo"}])
    with pytest.raises(openai.BadRequestError, match="suffix: this server does not implement"):
        client.completions.create(model="alpha", prompt="hi", suffix="!", max_tokens=2)


def _reference_greedy(
    model: Any, ids: list[int], steps: int, top: int = 0, presence: float = 0.0, frequency: float = 0.0,
    stop: set[int] | None = None,
) -> list[tuple[int, float, list[float]]]:  # fmt: skip
    """Greedy decoding by whole-sequence forwards (no cache): (token, its log-probability, the top-k log-probabilities
    in order) per step, with OpenAI's penalties applied to the choice and not to the log-probabilities."""
    out: list[tuple[int, float, list[float]]] = []
    generated: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + generated])).logits[0, -1].double()  # (vocab,)
        logprobs = torch.log_softmax(logits, -1)
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.shape[0]).double()
        token = int((logits - frequency * counts - presence * (counts > 0).double()).argmax())
        if stop and token in stop:
            break
        out.append((token, float(logprobs[token]), logprobs.topk(top).values.tolist() if top else []))
        generated.append(token)
    return out


def test_logprobs_are_the_models_log_softmax(server: dict[str, Any]) -> None:
    model, tokenizer = lorakit.load_model(server["base"])
    ids = prompt_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    reference = _reference_greedy(model, ids, MAX_NEW, top=3, stop={tokenizer.eos_token_id})
    reply = server["client"].chat.completions.create(
        model=server["base"], messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_NEW,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == len(reference) > 0
    for got, (token, logprob, top) in zip(content, reference, strict=True):
        assert got.logprob == pytest.approx(logprob, abs=1e-4)
        assert [t.logprob for t in got.top_logprobs] == pytest.approx(top, abs=1e-4)
        assert got.top_logprobs[0].logprob == pytest.approx(got.logprob, abs=1e-6)  # greedy took the most likely
        alone = tokenizer.decode([token])
        assert (got.token == alone and bytes(got.bytes) == alone.encode()) or "\ufffd" in alone  # part of a char
    assert b"".join(bytes(t.bytes) for t in content).decode() == reply.choices[0].message.content
    streamed = server["client"].chat.completions.create(
        model=server["base"], messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_NEW,
        logprobs=True, top_logprobs=3, stream=True,
    )  # fmt: skip
    pieces = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.logprob for t in pieces] == [t.logprob for t in content]
    legacy = server["client"].completions.create(model=server["base"], prompt=PROMPT, max_tokens=4, temperature=0,
                                                 logprobs=2)  # fmt: skip
    expected = _reference_greedy(model, list(tokenizer(PROMPT)["input_ids"]), 4, top=2)
    assert legacy.choices[0].logprobs.token_logprobs == pytest.approx([e[1] for e in expected], abs=1e-4)
    tops = [sorted(d.values(), reverse=True) for d in legacy.choices[0].logprobs.top_logprobs]
    assert [lp for top in tops for lp in top] == pytest.approx([lp for e in expected for lp in e[2]], abs=1e-4)
    assert "".join(legacy.choices[0].logprobs.tokens) == legacy.choices[0].text


def test_penalties_match_a_reference(server: dict[str, Any]) -> None:
    model, tokenizer = lorakit.load_model(server["base"])
    ids = prompt_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    for presence, frequency in ((0.0, 2.0), (1.5, 0.0)):
        expected = _reference_greedy(model, ids, MAX_NEW, presence=presence, frequency=frequency,
                                     stop={tokenizer.eos_token_id})  # fmt: skip
        reply = _chat(server["client"], server["base"], presence_penalty=presence, frequency_penalty=frequency)
        assert reply == tokenizer.decode([t for t, _, _ in expected], skip_special_tokens=True)
    assert _chat(server["client"], server["base"], frequency_penalty=2.0) != _chat(server["client"], server["base"])


def test_n_choices_are_the_single_requests_with_seed_plus_i(server: dict[str, Any]) -> None:
    client = server["client"]
    messages = [{"role": "user", "content": PROMPT}]
    many = client.chat.completions.create(model="alpha", messages=messages, max_tokens=MAX_NEW, temperature=1.0,
                                          seed=5, n=3)  # fmt: skip
    assert [c.index for c in many.choices] == [0, 1, 2]
    singles = [_chat(client, "alpha", temperature=1.0, seed=5 + i) for i in range(3)]
    assert [c.message.content for c in many.choices] == singles
    assert len(set(singles)) > 1
    assert many.usage is not None and many.usage.completion_tokens > MAX_NEW  # counted over the choices
    chunks = client.chat.completions.create(
        model="alpha", messages=messages, max_tokens=MAX_NEW, temperature=1.0, seed=5, n=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    texts, usage = ["", "", ""], None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == singles
    assert usage is not None and usage.completion_tokens == many.usage.completion_tokens


ENUM_SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["happy", "sad", "calm"]}},
     "required": ["ok", "mood"]},  # not in alphabetical order: the grammar keeps the schema's
    {"type": "object", "properties": {"size": {"enum": ["S", "M", "L"]}, "tags": {"type": "array", "items": {
        "enum": ["a", "b"]}, "maxItems": 2}}, "required": ["size", "tags"]},
    {"type": "object", "properties": {"answer": {"type": "null"}}, "required": ["answer"]},
]  # fmt: skip


def _structured(client: openai.OpenAI, model: str, schema: dict[str, Any] | None, prompt: str) -> tuple[str, str]:
    extra = (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}} if schema else {}
    )
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
                                           max_tokens=SERVER_MAX_NEW, **extra)  # type: ignore[arg-type]  # fmt: skip
    return reply.choices[0].message.content or "", reply.choices[0].finish_reason


def test_json_schema_replies_validate_in_a_batch_of_different_constraints(server: dict[str, Any]) -> None:
    """Rows with three schemas and rows without one share the batch; every constrained reply validates, and each
    reply equals the one it gets alone."""
    client = server["client"]
    jobs = [(model, schema, f"{PROMPT} {i}") for i, (model, schema) in enumerate(
        [("alpha", ENUM_SCHEMAS[0]), (server["base"], ENUM_SCHEMAS[1]), ("beta", None), ("beta", ENUM_SCHEMAS[2]),
         (server["base"], None), ("alpha", ENUM_SCHEMAS[1])])]  # fmt: skip
    alone = [_structured(client, *job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _structured(client, *job), jobs))
    assert together == alone
    for (_, schema, _), (text, finish) in zip(jobs, together, strict=True):
        if schema is not None:
            assert finish == "stop", text
            jsonschema.validate(json.loads(text), schema)
            assert list(json.loads(text)) == list(schema["properties"])  # in the schema's order
        else:
            with pytest.raises(ValueError):  # the tiny random model writes no JSON unconstrained
                json.loads(text)


def test_a_schema_that_cannot_be_enforced_is_a_400(server: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError, match=r"response_format.json_schema.schema: the schema cannot"):
        _structured(server["client"], "alpha", {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "hi")
    assert _chat(server["client"], "alpha")


def test_body_limit_is_a_413_before_the_body_is_parsed(server: dict[str, Any]) -> None:
    huge = {"model": "alpha", "messages": [{"role": "user", "content": "word " * 4_000_000}]}  # 20 MB
    with pytest.raises(openai.APIStatusError, match="--max-request-bytes") as refused:
        server["client"].chat.completions.create(**huge)
    assert refused.value.status_code == 413
    # A client that sends the whole body before it reads (urllib) reads the answer too, not a reset connection.
    status, body = _http(server["url"] + "/v1/chat/completions", huge)
    assert status == 413 and "--max-request-bytes" in body["error"]["message"]
    assert _http(server["url"] + "/v1/chat/completions", huge, key="wrong")[0] == 401
    big = {"model": "alpha", "messages": [{"role": "user", "content": "word " * BODY_LIMIT}]}
    host, port = server["url"].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (json.dumps(big).encode()[i : i + 4096] for i in range(0, len(json.dumps(big)), 4096))
    connection.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
    answer = connection.getresponse()  # no Content-Length: refused once the bytes read pass the limit
    assert answer.status == 413 and "--max-request-bytes" in json.loads(answer.read())["error"]["message"]
    connection.close()
    assert _chat(server["client"], "alpha")


def test_cors_is_off_unless_an_origin_is_allowed(server: dict[str, Any]) -> None:
    preflight = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip

    def allowed(url: str, origin: str) -> str | None:
        connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=30)
        connection.request("OPTIONS", "/v1/chat/completions", headers={**preflight, "Origin": origin})
        answer = connection.getresponse()
        answer.read()
        connection.close()
        return answer.getheader("access-control-allow-origin")

    assert allowed(server["url"], "http://page.example") is None
    state = server["state"]
    with running(create_app(ServerState(state.engine, state.base_name, adapters=state.adapters, api_key=KEY,
                                        cors_origins=("http://page.example",)))) as url:  # fmt: skip
        assert allowed(url, "http://page.example") == "http://page.example"
        assert allowed(url, "http://other.example") is None
        status, body = _http(url + "/v1/models", headers={"Origin": "http://page.example"})
        assert status == 200 and body["data"]


def test_the_openapi_schema_describes_the_request_bodies(server: dict[str, Any]) -> None:
    status, spec = _http(server["url"] + "/openapi.json", key=None)
    assert status == 200
    for path, model, fields in [
        ("/v1/chat/completions", "ChatRequest", {"messages", "response_format", "logprobs", "top_logprobs", "n"}),
        ("/v1/completions", "CompletionRequest", {"prompt", "logprobs", "response_format"}),
        ("/v1/load_lora_adapter", "LoadLoraAdapter", {"lora_name", "lora_path"}),
        ("/v1/unload_lora_adapter", "UnloadLoraAdapter", {"lora_name"}),
    ]:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        assert fields <= set(spec["components"]["schemas"][model]["properties"])
        assert spec["components"]["schemas"][model].get("additionalProperties") is False
