"""The project's layout rules, read from the source: each would fail the day a change
broke it.

* ``rtc_worker/storage/`` imports nothing else of the project (the file layer is a leaf);
* ``signaling/`` imports no module of the worker, the client or the channel;
* one function performs the temporary-file, fsync, rename sequence (``atomic.publish``)
  and one class hashes file content (``ContentHasher``);
* the worker's folder names are spelled in one module (``storage/layout.py``);
* no module of ``protocol/``, ``rtc_worker/``, ``signaling/`` or ``scripts/`` is over 500
  lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "rtc_worker", "signaling")
RUNTIME = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))
MAX_LINES = 500


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def calls(path: Path, dotted: str) -> list[int]:
    """Lines of ``path`` that call ``dotted`` (e.g. ``os.replace``)."""
    owner, _, attr = dotted.rpartition(".")
    lines = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attr
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == owner
        ):
            lines.append(node.lineno)
    return lines


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize(
    "path", sorted((REPO / "rtc_worker" / "storage").glob("*.py")), ids=relative
)
def test_the_file_layer_imports_nothing_else_of_the_project(path: Path) -> None:
    project = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] in PACKAGES and not name.startswith("rtc_worker.storage")
    }
    assert project == set(), f"{relative(path)} imports {sorted(project)}"


@pytest.mark.parametrize("path", sorted((REPO / "signaling").glob("*.py")), ids=relative)
def test_signaling_imports_no_worker_client_or_channel_module(path: Path) -> None:
    allowed = ("rtc_worker.storage", "rtc_worker.settings_sources")
    worker = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] == "rtc_worker" and not name.startswith(allowed)
    }
    assert worker == set(), f"{relative(path)} imports {sorted(worker)}"


def test_one_function_renames_files_into_place() -> None:
    found = {
        f"{relative(path)}:{line}"
        for path in RUNTIME
        for name in ("os.replace", "os.rename", "os.link")
        for line in calls(path, name)
    }
    atomic = [spot for spot in found if spot.startswith("rtc_worker/storage/atomic.py:")]
    assert found == set(atomic) and atomic, found
    tree = ast.parse((REPO / "rtc_worker" / "storage" / "atomic.py").read_text("utf-8"))
    owners = {
        func.name
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef)
        for node in ast.walk(func)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "rename", "link")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
    }
    assert owners <= {"publish", "_move_no_replace"}, owners


def test_one_place_hashes_file_content() -> None:
    found = [
        relative(path)
        for path in RUNTIME
        if calls(path, "hashlib.sha256") and "protocol/testing/" not in relative(path)
    ]
    # protocol/identity.py hashes 32-byte public keys into fingerprints, and
    # protocol/proof.py a nonce and a few KiB of ranges into a proof digest: not file content
    assert sorted(found) == [
        "protocol/identity.py",
        "protocol/proof.py",
        "rtc_worker/storage/metadata.py",
    ]


def test_the_worker_folder_names_are_spelled_in_one_module() -> None:
    spelled = re.compile(r"[\"']\.rtc-(?:jobs|work|store)\b")
    found = [relative(p) for p in RUNTIME if spelled.search(p.read_text("utf-8"))]
    assert found == ["rtc_worker/storage/layout.py"]


def line_count(path: Path) -> int:
    """The lines of a source file."""
    return len(path.read_text("utf-8").splitlines())


@pytest.mark.parametrize("path", RUNTIME + SCRIPTS, ids=relative)
def test_modules_stay_under_500_lines(path: Path) -> None:
    assert line_count(path) <= MAX_LINES, relative(path)


def test_the_line_limit_counts_a_501_line_script(tmp_path: Path) -> None:
    script = tmp_path / "bench_long.py"
    script.write_text("pass\n" * (MAX_LINES + 1), "utf-8")
    assert line_count(script) > MAX_LINES
    script.write_text("pass\n" * MAX_LINES, "utf-8")
    assert line_count(script) <= MAX_LINES
