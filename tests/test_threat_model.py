"""THREAT_MODEL.md names a test for each defended attack: every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "THREAT_MODEL.md"
_CELL = re.compile(
    r"`(test_[a-z0-9_]+\.py)((?:::test_[A-Za-z0-9_]+)?)`((?:, `::test_[A-Za-z0-9_]+`)*)"
)


def defined_tests(module: str) -> set[str]:
    tree = ast.parse((REPO / "tests" / module).read_text("utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name for node in tree.body if isinstance(node, functions)}


def references() -> list[tuple[str, str]]:
    """``(module, test)`` for each ``module.py::test`` (and ``, ::test`` after it) named."""
    found = []
    for match in _CELL.finditer(DOC.read_text("utf-8")):
        module, first, more = match.groups()
        for name in [first, *re.findall(r"::test_[A-Za-z0-9_]+", more)]:
            found.append((module, name.removeprefix("::")))
    return found


def test_every_test_the_threat_model_names_exists() -> None:
    refs = references()
    assert len(refs) >= 50
    missing = [f"{m}::{t}" for m, t in refs if t and t not in defined_tests(m)]
    assert not missing, missing
    modules = {m for m, _ in refs}
    assert all((REPO / "tests" / m).is_file() for m in modules)


def test_every_attack_test_module_is_in_the_threat_model() -> None:
    text = DOC.read_text("utf-8")
    for path in sorted((REPO / "tests").glob("test_attacks_*.py")):
        assert path.name in text, path.name
