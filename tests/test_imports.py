"""Imports point one way (README "How the code is laid out"): each unit of the package imports only units listed
before it in ORDER, with no exceptions; nothing below the CLI imports the ``lorakit`` package itself; the core never
imports transformers; and only tests import peft."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lorakit"
# Bottom to top. A unit is a module or package (longest match wins: "variants.dora" before "variants").
ORDER = [
    "_version", "errors", "files", "memory", "config",
    # the LoRA core: the product, the layers, the layer variants the core builds, selection, adapter operations,
    # the file format
    "lora_fn", "layers", "variants", "variants.inits", "variants.dora", "variants.ia3", "targeting", "adapters", "io",
    # methods that work on a model holding adapters
    "methods", "methods.mixed", "methods.combine",
    # quantised bases, loading models (device and precision rules), estimates
    "quant", "models", "plan",
    # generic data, the loss
    "data", "loss",
    # what runs a model: evaluation (inference never imports training), the built-in tasks and their scorers,
    # training, export, serving
    "eval", "tasks", "train", "export",
    # a training run: its folder and the job that fills it; then serving, which reads runs
    "runs", "serve",
    # the command line, and the package's public face
    "cli", "__main__", "__init__",
]  # fmt: skip
TRANSFORMERS_FREE = {"_version", "errors", "files", "memory", "config", "lora_fn", "layers", "variants", "methods",
                     "targeting", "adapters", "io", "data"}  # fmt: skip


def _module(path: Path) -> str:
    """ "lorakit/variants/dora.py" -> "variants.dora"; a package's __init__ is the package ("variants")."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """The ORDER entry a module belongs to: the longest entry equal to it or a dotted prefix of it."""
    matches = [u for u in ORDER if module == u or module.startswith(u + ".")]
    assert matches, f"{module}: add it to ORDER"
    return max(matches, key=len)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement (``from a import b`` also counts ``a.b``: it may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _wrong_imports(path: Path, unit: str) -> list[str]:
    wrong = []
    below_cli = ORDER.index(unit) < ORDER.index("cli")
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "peft":
            wrong.append(f"{path.name} imports peft")
        if top == "transformers" and unit.split(".")[0] in TRANSFORMERS_FREE:
            wrong.append(f"{unit} imports transformers")
        if top != "lorakit":
            continue
        if name == "lorakit" and below_cli:
            wrong.append(f"{unit} imports the lorakit package itself")
            continue
        target = name.removeprefix("lorakit.")
        if name == "lorakit" or not any(target == u or target.startswith(u + ".") for u in ORDER):
            continue  # `from lorakit.x import name` also lists lorakit.x.name, which is no module
        if ORDER.index(_unit(target)) > ORDER.index(unit):
            wrong.append(f"{unit} ({path.name}) imports {name}, which is above it")
    return wrong


def test_every_module_has_a_unit() -> None:
    for path in PACKAGE.rglob("*.py"):
        _unit(_module(path))


def test_imports_point_one_way() -> None:
    wrong = [w for path in PACKAGE.rglob("*.py") for w in _wrong_imports(path, _unit(_module(path)))]
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("unit", "source", "complaint"),
    [
        ("layers", "from lorakit.cli import main\n", "imports lorakit.cli"),
        ("layers", "from lorakit.quant import QuantLinear\n", "imports lorakit.quant"),
        ("eval", "from lorakit.train.trainer import Trainer\n", "imports lorakit.train"),
        ("train", "import lorakit\n", "the lorakit package itself"),
        ("export", "from lorakit import load_model\n", "the lorakit package itself"),
        ("adapters", "import transformers\n", "imports transformers"),
        ("cli", "import peft\n", "imports peft"),
    ],
)
def test_the_check_can_fail(tmp_path: Path, unit: str, source: str, complaint: str) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    wrong = _wrong_imports(bad, unit)
    assert any(complaint in w for w in wrong), wrong
