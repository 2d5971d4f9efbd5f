"""One owner for a run folder's file names: no module but ``lorakit/runs/folder.py`` holds one in its code.

Every string literal of the package (docstrings aside: they may say which file a function reads) is checked for the
names in ``lorakit.runs.folder.FILE_NAMES``: a file name (``metrics.jsonl``) anywhere in a literal, a folder name
(``initial_adapter``, also a parameter of ``save_adapter``) as a whole literal. The adapter's own files and the
checkpoints folder are the formats of ``lorakit.io`` and ``lorakit.train.checkpoint``, which a run folder reaches
through them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from lorakit.runs.folder import FILE_NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "lorakit"
OWNER = PACKAGE / "runs" / "folder.py"


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, kinds) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}  # fmt: skip


def _named(text: str) -> list[str]:
    return [name for name in FILE_NAMES if (name in text if "." in name else text == name)]


def run_file_names(source: str) -> list[str]:
    """The run-folder names the code of ``source`` holds in string literals (f-strings' parts included)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += _named(node.value)
    return found


def test_no_module_but_the_run_folder_knows_its_file_names() -> None:
    known = {
        str(path.relative_to(PACKAGE)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != OWNER and (names := run_file_names(path.read_text(encoding="utf-8")))
    }
    assert not known, known


def test_the_owner_holds_every_name() -> None:
    assert sorted(run_file_names(OWNER.read_text(encoding="utf-8"))) == sorted(FILE_NAMES)


def test_the_check_can_fail() -> None:
    assert run_file_names('open(run / "metrics.jsonl")\n') == ["metrics.jsonl"]
    assert run_file_names('print(f"see {out}/loss.png and the card")\n') == ["loss.png"]
    assert run_file_names('shutil.rmtree(out / "initial_adapter")\n') == ["initial_adapter"]
    assert run_file_names('"""Reads train_config.json."""\nraise ValueError("initial_adapter: only LoRA")\n') == []
