"""Regional compilation: every decoder layer runs one ``torch.compile``'d forward, inside training steps only.

A decoder layer is the model's repeated block (RMSNorm, the q/k/v/o projections with their LoRA products, rotary
embeddings, attention, the SiLU-gated MLP, two residual adds). Eagerly each element-wise step is its own kernel
reading and writing whole activations, forward and backward; Inductor (``torch.compile``'s default backend, C++
code built with the machine's compiler on a CPU) fuses them into a few loops around the matmuls. The layer class's
``forward`` is compiled once and every layer of that class calls the same compiled function (its weights are
inputs, not constants), so the model compiles one graph, not one per layer: compiling the whole model would
trace 30 copies of the same code.

Scope. ``active()`` gives each layer an instance attribute ``forward`` that calls the compiled function, and
removes it on the way out: outside the trainer's steps (evaluation, generation, saving) the model runs its
plain eager code, and nothing of the class or of transformers is patched. A layer call with a KV cache runs
eagerly: the cache is indexed by the layer's number, which the compiled code would specialise on, one graph per
layer. So the trainer with compiled layers runs a batch's shared prompt prefix with every row instead of once
(``lorakit.loss``'s prefix pass uses a cache): on the demo's batches the compiled whole rows are still the faster,
more so than compiling only the MLP and keeping the shared prefix (docs/speed-and-memory.md).

Shapes. The batch's sequence length varies from step to step; the activations' dimensions are compiled as
symbols (``dynamic=True``; parameter shapes stay fixed), so a new length reuses the compiled code instead of
compiling again.

Process-wide: torch.compile's caches belong to the process and outlive the trainer: the compiled code hangs off
the layer class's ``forward`` code object (the same entries serve another model of the same class compiled the
same way), ``torch._dynamo.config.recompile_limit`` counts graphs per code object, and Inductor keeps built
kernels on disk (``/tmp/torchinductor_<user>`` unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise), which makes a
later process's compile faster. ``torch.compiler.reset()`` clears the in-memory part. On a machine with more than
one core Inductor builds kernels in a pool of worker processes that it starts once and keeps until the process
exits (``TORCHINDUCTOR_COMPILE_THREADS=1`` builds them in-process). This module changes no ``torch._dynamo`` or
Inductor setting.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lorakit.errors import LorakitError
from lorakit.models import decoder_layers

CACHE_ARGS = ("past_key_values", "cache", "past_key_value")  # the names transformers releases give a layer's cache


class CompiledLayers:
    """One compiled ``forward`` per decoder-layer class of ``model``, switched on for the layers by ``active()``."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = decoder_layers(model)
        if not self.layers:
            raise LorakitError(
                f"--compile: cannot find the decoder layers of {type(model).__name__} (its _no_split_modules)"
            )
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if on_cpu and cpp_compiler() is None:
            raise LorakitError(
                f"--compile on a CPU builds C++ kernels and needs a C++ compiler ({default_cxx()}, or the one $CXX "
                "names): install one (Debian: apt-get install g++) or train without --compile"
            )
        self.compiled: dict[type, Callable[..., Any]] = {
            kind: torch.compile(kind.forward, dynamic=True) for kind in {type(layer) for layer in self.layers}
        }

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside the block the layers run the compiled forward; outside, their class's own."""
        for layer in self.layers:
            # An instance attribute shadows the class's method for this layer only (nn.Module calls self.forward).
            layer.forward = functools.partial(_forward, self.compiled[type(layer)], layer)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)


def default_cxx() -> str:
    """The C++ compiler Inductor runs on a CPU: $CXX, else g++ (clang++ on macOS)."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


def cpp_compiler() -> str | None:
    """The path of that compiler, or None when it is not installed."""
    return shutil.which(default_cxx())


def _forward(compiled: Callable[..., Any], layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if any(kwargs.get(name) is not None for name in CACHE_ARGS):
        return type(layer).forward(layer, *args, **kwargs)  # see the module docstring: eager with a cache
    if args and isinstance(args[0], torch.Tensor) and torch.is_grad_enabled() and not args[0].requires_grad:
        # The first layer's input (the frozen embeddings' output) needs no gradient, the others' do: as it is, the
        # first layer would compile a graph of its own (~40 s). Its input gradient costs ~1/60 of a backward.
        args = (args[0].detach().requires_grad_(), *args[1:])
    return compiled(layer, *args, **kwargs)
