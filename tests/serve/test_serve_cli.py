"""``lorakit serve`` flag mistakes: one line, exit 2, before the server answers anything; and a QLoRA adapter
served on the base it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from lorakit.cli import build_parser, main
from lorakit.eval.generate import generate_batch, prompt_ids
from lorakit.io import load_adapter
from lorakit.models import load_model
from lorakit.quant import quantized_modules
from lorakit.serve.app import create_app
from lorakit.serve.server import build_state, parse_adapter_flags
from tests.serve.conftest import running, save_adapter


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapter-dir", "/no/such/dir"], "--adapter-dir /no/such/dir: no such folder"),
        (["--adapter", "a=/no/such/adapter"], "no such adapter folder"),
        (["--adapter", "a=/x", "--adapter", "a=/y"], "the name 'a' is given twice"),
        (["--max-batch", "0"], "expected a positive integer"),
        (["--max-request-bytes", "0"], "expected a positive integer"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 makes the server reachable from other machines, and it has no API key"),
        (["--host", "example.com"], "--host example.com makes the server reachable"),
        # Past the exposure check (a key, or the user says they mean it): the next mistake is reported.
        (["--host", "0.0.0.0", "--api-key", "k", "--adapter-dir", "/no/such/dir"], "--adapter-dir /no/such/dir"),
        (["--host", "::", "--allow-unauthenticated", "--adapter-dir", "/no/dir"], "--adapter-dir /no/dir: no such"),
        (["--host", "::1", "--adapter-dir", "/no/dir"], "--adapter-dir /no/dir: no such"),  # loopback
    ],
)
def test_bad_flags_are_one_line_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_adapter_flags() -> None:
    assert parse_adapter_flags(["x=/a/b", "runs/y"]) == {"x": Path("/a/b"), "y": Path("runs/y")}


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAKIT_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "--api-key", "flag"]).api_key == "flag"
    monkeypatch.delenv("LORAKIT_API_KEY")
    assert build_parser().parse_args(["serve"]).api_key is None


def _run(model_dir: Path, folder: Path, seed: int, train_config: dict[str, object] | None) -> Path:
    """An adapter inside a run folder whose train_config.json says how it was trained."""
    adapter = save_adapter(model_dir, folder / "adapter", seed, r=4, lora_alpha=8, target_modules="all-linear")
    if train_config is not None:
        (folder / "train_config.json").write_text(json.dumps(train_config))
    return adapter


def test_adapters_trained_on_another_base_are_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qlora = _run(tiny_model_dir, tmp_path / "q", 1, {"method": "qlora", "bits": 4})
    lora = _run(tiny_model_dir, tmp_path / "l", 2, {"method": "lora"})
    model = ["--model", str(tiny_model_dir)]
    for flags, message in [
        (["--adapter", f"q={qlora}", "--adapter", f"l={lora}"], "--adapter: these adapters were trained on different "
         "kinds of base (q: nf4, l: float); serve each kind from its own server"),
        (["--adapter", f"q={qlora}", "--quantize", "none"], "--adapter q: adapter 'q' was trained on a nf4 base and "
         "this server's base is float: serve it from a server started with --quantize nf4"),
        (["--adapter", f"l={lora}", "--quantize", "int8"], "--adapter l: adapter 'l' was trained on a float base and "
         "this server's base is int8: serve it from a server started with --quantize none"),
    ]:  # fmt: skip
        assert main(["serve", *model, *flags]) == 2
        err = capsys.readouterr().err
        assert err == f"lorakit: error: {message}\n", err


def test_a_qlora_adapter_is_served_on_its_quantised_base(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its train_config.json says int8: the server quantises the base so, and answers as transformers' generate
    does on that base with that adapter."""
    adapter = _run(tiny_model_dir, tmp_path / "run", 3, {"method": "qlora", "bits": 8})
    from lorakit.cli.serve import served_quantization

    assert served_quantization({"q": adapter}, None) == "int8"
    assert "quantised the same way" in capsys.readouterr().err
    state = build_state(str(tiny_model_dir), {"q": adapter}, None, dtype="fp32", max_new_tokens=12,
                        quantize="int8")  # fmt: skip
    try:
        assert quantized_modules(state.model), "the base's Linear weights are int8"
        with running(create_app(state)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            reply = client.chat.completions.create(model="q", messages=[{"role": "user", "content": "Hello there"}],
                                                   temperature=0, max_tokens=12)  # fmt: skip
    finally:
        state.engine.close()
    # The reference: the same quantised base and adapter, unmerged, through transformers' own generate.
    model, tokenizer = load_model(str(tiny_model_dir), quantize="int8")
    load_adapter(model, adapter)
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "Hello there"}])
    assert reply.choices[0].message.content == generate_batch(model.eval(), tokenizer, [ids], 12)[0]
    assert reply.usage is not None and reply.usage.prompt_tokens == len(ids)
