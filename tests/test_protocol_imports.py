"""protocol/ is sans-IO: no module of it (protocol/testing/ aside, which may use
hypothesis) imports hypothesis, asyncio, aiortc, aiohttp, socket or a filesystem
module, or opens a file; and the package imports with those libraries unavailable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "protocol"
RUNTIME = sorted(p for p in PACKAGE.glob("*.py"))
TESTING = sorted((PACKAGE / "testing").glob("*.py"))

#: Never imported by protocol/ (its own imports; the standard library may use some).
FORBIDDEN = {
    "asyncio",
    "aiortc",
    "aiohttp",
    "socket",
    "ssl",
    "selectors",
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "glob",
    "fcntl",
    "mmap",
    "subprocess",
    "threading",
    "rtc_worker",
    "signaling",
}


def imported(path: Path) -> set[str]:
    """The top-level modules ``path`` imports, and "open()" if it calls open."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("open", "__import__", "exec", "eval")
        ):
            names.add(f"{node.func.id}()")
    return names


def test_the_modules_are_found() -> None:
    assert {p.name for p in RUNTIME} >= {"connection.py", "codec.py", "routes.py", "signaling.py"}
    assert {p.name for p in TESTING} >= {"pair.py", "exchange.py", "valid.py"}


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_the_runtime_imports_no_io_and_no_hypothesis(path: Path) -> None:
    names = imported(path)
    assert not names & (FORBIDDEN | {"hypothesis", "importlib"}), names & FORBIDDEN
    assert not {n for n in names if n.endswith("()")}, names


@pytest.mark.parametrize("path", TESTING, ids=lambda p: p.name)
def test_the_strategies_are_sans_io_too(path: Path) -> None:
    names = imported(path)
    assert not names & FORBIDDEN, names & FORBIDDEN
    assert not {n for n in names if n.endswith("()")}, names


def test_the_checker_sees_what_it_must() -> None:
    sample = REPO / "tests" / "test_protocol_imports.py"
    assert {"ast", "subprocess", "sys", "pathlib", "pytest"} <= imported(sample)


_BLOCKED = ("hypothesis", "asyncio", "aiortc", "aiohttp")
_PROBE = f"""
import importlib, importlib.abc, pkgutil, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Block())
import protocol
names = [m.name for m in pkgutil.iter_modules(protocol.__path__, "protocol.")]
for name in names:
    if name != "protocol.testing":
        importlib.import_module(name)
print(len(names), sorted(m for m in {_BLOCKED!r} if m in sys.modules))
try:
    import protocol.testing
except ImportError as exc:
    print("testing:", exc)
"""


def test_the_package_imports_with_those_libraries_blocked() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    modules = [p for p in RUNTIME if p.name != "__init__.py"]
    assert lines[0] == f"{len(modules) + 1} []"  # every module, and the testing package
    assert lines[1] == "testing: blocked: hypothesis"  # the strategies need hypothesis
