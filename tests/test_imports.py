"""Imports point one way (../shared/STYLE.md): config <- layers <- targeting <- adapters <- io <-
models/data <- train/eval/serve <- cli. peft is a test dependency only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lorakit"
# Each module's level; a module may import only from levels at or below its own.
LEVELS = {
    "errors": 0, "config": 1, "train_config": 1, "layers": 2, "targeting": 3, "adapters": 4, "io": 5, "models": 6,
    "data": 6,
    "mixed": 4, "quant": 2, "lora_fn": 2, "train": 7, "eval": 7, "serve": 7, "export": 7, "plan": 7, "compare": 8,
    "demo": 8, "cli": 9, "__main__": 10, "__init__": 10,
    "dora": 2, "ia3": 2, "inits": 2, "combine": 4,  # adapter methods beside layers.py and adapters.py
    "combine_folders": 7,  # lorakit combine: loads a model (models) and adapter files (io)
    "memory": 0,  # peak RSS and malloc_trim: the standard library only
}  # fmt: skip
TRANSFORMERS_FREE = {
    "errors", "config", "train_config", "layers", "lora_fn", "targeting", "adapters", "io", "dora", "ia3", "inits",
    "combine", "mixed", "memory",
}  # fmt: skip


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_module_has_a_level() -> None:
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LEVELS), f"add a level for {units - set(LEVELS)}"


def test_imports_point_one_way() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "peft":
                wrong.append(f"{path.name} imports peft")
            if top == "transformers" and unit in TRANSFORMERS_FREE:
                wrong.append(f"{path.name} imports transformers")
            if top == "lorakit" and "." in name:
                target = name.split(".")[1]
                if target != unit and LEVELS.get(target, 99) > LEVELS[unit]:
                    wrong.append(f"{path.relative_to(PACKAGE)} ({unit}) imports {name}")
    assert not wrong, wrong


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "layers.py"
    bad.write_text("from lorakit.cli import main\nimport peft\n")
    assert _imports(bad) == {"lorakit.cli", "peft"}
