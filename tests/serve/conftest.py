"""Helpers shared by the server's tests: random adapters on the tiny model, and a real uvicorn server on a free
loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import lorakit
from tests.tiny import randomize_lora_b


def save_adapter(model_dir: Path, folder: Path, seed: int, **kwargs: Any) -> Path:
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


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
