"""Imports point one way (README "How the code is laid out"): every module of the package imports only modules
listed before it in ORDER, between packages and inside them, with no exceptions, so there is no import cycle
anywhere; README's table lists every module, in that order; nothing below the CLI imports the ``lorakit`` package
itself; the core never imports transformers; and only tests import peft."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lorakit"
# Every module, bottom to top. A package's own __init__ ("quant") comes after its modules: it may re-export them.
ORDER = [
    # basics: one-line errors, atomic writes, memory readings, adapter configs
    "_version", "errors", "files", "memory", "config",
    # the LoRA core: the product, the layers, the layer variants the core builds, selection, adapter operations,
    # the file format
    "lora_fn", "layers", "variants.dora", "variants.ia3", "variants.inits", "variants", "targeting", "adapters", "io",
    # methods that work on a model holding adapters
    "methods.mixed", "methods.combine", "methods",
    # quantised bases, loading models (device and precision rules), estimates
    "quant.backends", "quant.linear", "quant.model", "quant", "models", "plan",
    # generic data, the loss
    "data.formats", "data.jsonl", "data.sources", "data.tokenize", "data.dataset", "data.batching", "data.preference",
    "data.prompts", "data", "loss",
    # evaluation (inference never imports training): generation, merging for inference, scores, tables
    "eval.generate", "eval.chat", "eval.inference", "eval.metrics", "eval.replies", "eval.perplexity", "eval.report",
    "eval",
    # the built-in tasks: generators, shipped files, scorers
    "tasks.contacts_spec", "tasks.contacts", "tasks.contacts_metrics", "tasks.contacts_eval", "tasks.knowledge",
    "tasks",
    # training: the parts, then the trainer that puts them in order
    "train.attention", "train.config", "train.optim", "train.checkpoint", "train.compile", "train.distributed",
    "train.rng", "train.prepare", "train.batches", "train.reference", "train.sampling", "train.trainer",
    # post-training on the trainer's primitives: rewards, DPO, GRPO
    "train.rewards", "train.preference", "train.grpo", "train",
    # getting a model out: merged folders, GGUF files
    "export.gguf_layout", "export.gguf_lora", "export.gguf_model", "export.merge", "export.modelfile", "export.gguf",
    "export",
    # a training run: its folder, which base an adapter wants, card and plot, settings, recipes, the job
    "runs.folder", "runs.origin", "runs.card", "runs.config", "runs.recipe", "runs.job", "runs",
    # serving: grammars, the engine, the wire format, access, state, the page, the routes, the server
    "serve.grammar", "serve.engine", "serve.protocol", "serve.security", "serve.state", "serve.page", "serve.app",
    "serve.server", "serve",
    # the command line: what the subcommands share, the process's settings, one module per subcommand
    "cli.common", "cli.process", "cli.train", "cli.eval", "cli.generate", "cli.chat", "cli.merge", "cli.export",
    "cli.plan", "cli.combine", "cli.demo", "cli.serve",
    "cli.compare.analysis", "cli.compare.report", "cli.compare.setup", "cli.compare.score", "cli.compare.trials",
    "cli.compare", "cli",
    # the entry point, and the package's public face
    "__main__", "__init__",
]  # fmt: skip
TRANSFORMERS_FREE = {"_version", "errors", "files", "memory", "config", "lora_fn", "layers", "variants", "methods",
                     "targeting", "adapters", "io", "data"}  # fmt: skip


def _module(path: Path) -> str:
    """ "lorakit/variants/dora.py" -> "variants.dora"; a package's __init__ is the package ("variants"), the
    top-level one "__init__"."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {_module(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The lorakit modules an import statement of ``path`` names (at any depth, lazy or TYPE_CHECKING ones too):
    ``from lorakit.x import y`` names ``x.y`` when that is a module, else ``x``; "__init__" is the package itself.
    A relative import is named as such (the package uses none)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("relative import")
        elif isinstance(node, ast.Import):
            names.update(_target(alias.name) for alias in node.names if alias.name.split(".")[0] == "lorakit")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lorakit":
            for alias in node.names:
                inner = _target(f"{node.module}.{alias.name}")
                names.add(inner if inner in MODULES else _target(node.module))
    return names


def _target(name: str) -> str:
    return "__init__" if name == "lorakit" else name.removeprefix("lorakit.")


def _other_imports(path: Path) -> set[str]:
    """Top-level names of the packages other than lorakit that ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - {"lorakit"}


def _wrong_imports(path: Path, module: str) -> list[str]:
    wrong = []
    below_cli = ORDER.index(module) < ORDER.index("cli.common")
    others = _other_imports(path)
    if "peft" in others:
        wrong.append(f"{module} imports peft")
    if "transformers" in others and module.split(".")[0] in TRANSFORMERS_FREE:
        wrong.append(f"{module} imports transformers")
    for name in sorted(_imports(path) - {module}):
        if name == "__init__" and below_cli:
            wrong.append(f"{module} imports the lorakit package itself")
        elif name not in ORDER:
            wrong.append(f"{module} imports {name}, which is no module of the package (or not in ORDER)")
        elif ORDER.index(name) > ORDER.index(module):
            wrong.append(f"{module} imports lorakit.{name}, which is above it")
    return wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of a module graph (each as a path a -> ... -> a), found by a depth-first walk."""
    found, done, path = [], set(), []

    def walk(node: str) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            walk(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)
    return found


def test_order_lists_every_module_once() -> None:
    assert len(ORDER) == len(set(ORDER)), [m for m in ORDER if ORDER.count(m) > 1]
    assert sorted(MODULES) == sorted(ORDER), {"not in ORDER": sorted(set(MODULES) - set(ORDER)),
                                              "no such module": sorted(set(ORDER) - set(MODULES))}  # fmt: skip


def test_imports_point_one_way() -> None:
    wrong = [w for module, path in MODULES.items() for w in _wrong_imports(path, module)]
    assert not wrong, wrong


def test_no_import_cycle_anywhere() -> None:
    graph = {module: _imports(path) - {module} for module, path in MODULES.items()}
    assert not _cycles(graph), _cycles(graph)


def _readme_modules() -> list[str]:
    """The modules README's layout table names, in its order: `quant/linear` is "quant.linear", `quant/` the
    package "quant"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in table.splitlines() if line.startswith("| ") and line.count("|") >= 4]
    names = [name for row in rows[1:] for name in re.findall(r"`([^`]+)`", row)]  # rows[0]: the header
    return [name.rstrip("/").replace("/", ".") for name in names]


def test_readme_lists_every_module_in_import_order() -> None:
    assert _readme_modules() == ORDER


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("layers", "from lorakit.cli import main\n", "imports lorakit.cli,"),
        ("layers", "from lorakit.quant import QuantLinear\n", "imports lorakit.quant,"),
        ("eval.replies", "from lorakit.train.trainer import Trainer\n", "imports lorakit.train.trainer"),
        ("serve.page", "from lorakit.serve.app import create_app\n", "imports lorakit.serve.app"),
        ("data.formats", "def f():\n    from lorakit.data import jsonl\n", "imports lorakit.data.jsonl"),
        ("train.trainer", "import lorakit\n", "the lorakit package itself"),
        ("export.merge", "from lorakit import load_model\n", "the lorakit package itself"),
        ("adapters", "import transformers\n", "imports transformers"),
        ("cli.train", "import peft\n", "imports peft"),
        ("runs.job", "from . import folder\n", "relative import"),
    ],
)
def test_the_check_can_fail(tmp_path: Path, module: str, source: str, complaint: str) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    wrong = _wrong_imports(bad, module)
    assert any(complaint in w for w in wrong), wrong


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
