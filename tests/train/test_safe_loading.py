"""Files from outside are never unpickled: a malicious checkpoint state or adapter .bin is refused unexecuted."""

from __future__ import annotations

import contextlib
import io
import pickle
import subprocess
from pathlib import Path

import pytest

import lorakit
from lorakit.runs import RunConfig, train_run


class _Payload:
    """Unpickling this runs ``touch <path>``: the test checks the file never appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (subprocess.call, (["touch", str(self.path)],))


def test_malicious_checkpoint_state_is_refused_unexecuted(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(tmp_path / "run"),
                      max_steps=4, save_every=2, batch_size=4, precision="fp32", r=4, lora_alpha=8)  # fmt: skip
    train_run(cfg, progress=False)
    state = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1] / "trainer_state.pt"
    pwned = tmp_path / "pwned"
    state.write_bytes(pickle.dumps({"step": 1, "x": _Payload(pwned)}))
    (tmp_path / "run" / "train_summary.json").unlink()  # as if killed before the end
    from lorakit.cli import main  # in this process: the payload would run in whichever process unpickles it

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--model", str(tiny_model_dir), "--data", str(small_chat_data),
                     "--output", str(tmp_path / "run"), "--max-steps", "4", "--save-every", "2", "--batch-size", "4",
                     "--precision", "fp32", "--r", "4", "--lora-alpha", "8", "--resume"])  # fmt: skip
    assert code == 2, stderr.getvalue()
    assert "not a lorakit checkpoint state, refused without running it" in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    assert not pwned.exists(), "the pickle's code ran"


def test_malicious_adapter_bin_is_refused_unexecuted(tmp_path: Path) -> None:
    from tests.tiny import tiny_llama

    folder = lorakit.save_adapter(
        lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj"])), tmp_path / "a"
    )
    (folder / "adapter_model.safetensors").unlink()
    pwned = tmp_path / "pwned"
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(pwned)))
    with pytest.raises(lorakit.AdapterError, match="refusing to load a pickled adapter"):
        lorakit.load_adapter(tiny_llama(), folder)
    assert not pwned.exists()
