"""The fuzz run's files: the training package and symlinks placed in the shared root,
the sentinel folder outside it, and the snapshots that show whether anything outside
the root changed (the outside-write check of ``scripts/fuzz_worker.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Placeholders in generated frames, replaced when a frame is sent (so the sequence
#: depends on the seed only): the sentinel folder outside the root, the temporary folder.
OUTSIDE = "@OUTSIDE@"
TMPDIR = "@TMPDIR@"
#: Every file of the sentinel folder carries this in its name: a JOB_LOG line that
#: names one means the worker read outside its root.
MARKER = "SECRET-OUTSIDE"

#: The training package placed at ``inputs/package.zip`` (member name -> bytes).
PACKAGE: dict[str, bytes] = {
    "data/train.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(1500)),
    "config.json": b'{"epochs": 2, "lr": 0.001}\n',
    "README.md": b"# package\n\nfuzz fixture\n",
    "weights.bin": random.Random(11).randbytes(100_000),
}

#: The sentinel folder outside the root (relative name -> bytes).
OUTSIDE_FILES: dict[str, bytes] = {
    f"{MARKER}-a.txt": b"must never be read or written by the worker\n",
    f"sub/{MARKER}-nested.txt": b"nested sentinel\n",
}
OUTSIDE_ZIP = f"{MARKER}-package.zip"


def build_zip(members: dict[str, bytes]) -> bytes:
    """A deterministic ZIP (fixed timestamps) of ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def package_entries(zip_bytes: bytes) -> dict[str, tuple[int, str]]:
    """Member name -> (size, sha256) of every file in a ZIP."""
    entries = {}
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                data = archive.read(info)
                entries[info.filename] = (len(data), hashlib.sha256(data).hexdigest())
    return entries


@dataclass
class Fixtures:
    """What was placed for the run (to check against and to remove afterwards)."""

    tmp: Path
    outside: Path
    root: Path | None
    expected: dict[str, tuple[int, str]] | None = None
    created: list[Path] = field(default_factory=list)

    def remove_created(self) -> None:
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    shutil.rmtree(path)


def make_fixtures(tmp: Path, root: Path | None, *, own_root: bool) -> Fixtures:
    """The sentinel folder in ``tmp/outside`` and, with a root, the package and symlinks."""
    outside = tmp / "outside"
    for rel, data in OUTSIDE_FILES.items():
        (outside / rel).parent.mkdir(parents=True, exist_ok=True)
        (outside / rel).write_bytes(data)
    (outside / OUTSIDE_ZIP).write_bytes(build_zip({f"{MARKER}-member.txt": b"secret\n"}))
    fixtures = Fixtures(tmp, outside, root)
    if root is None:
        return fixtures
    root.mkdir(parents=True, exist_ok=True)

    def place(rel: str, data: bytes | None = None, link: str | None = None) -> None:
        path = root / rel
        if path.exists() or path.is_symlink():
            return  # never overwrite what a caller's root holds
        path.parent.mkdir(parents=True, exist_ok=True)
        if link is not None:
            path.symlink_to(link)
        elif data is not None:
            path.write_bytes(data)
        else:
            path.mkdir()
        fixtures.created.append(path)

    for folder in ("inputs", "outputs"):
        place(folder)
    place("inputs/package.zip", build_zip(PACKAGE))
    place("inputs/plain.txt", b"a plain text input\n")
    place("inputs/corrupt.zip", b"PK\x03\x04" + random.Random(5).randbytes(300))
    place("link-out", link=str(outside))
    place("tmp-link", link=str(tmp))
    place("inputs/rel-out", link=os.path.relpath(outside, root / "inputs"))
    place("inputs/secret-link.zip", link=str(outside / OUTSIDE_ZIP))
    place("inputs/dangling", link=str(outside / "nothing-here"))
    place("outputs/escape", link=str(outside / "sub"))
    place("outputs/loop", link="loop")
    if own_root:
        fixtures.expected = package_entries(build_zip(PACKAGE))
    else:
        package = root / "inputs" / "package.zip"
        with contextlib.suppress(OSError, zipfile.BadZipFile):
            fixtures.expected = package_entries(package.read_bytes())
    return fixtures


def snapshot(tmp: Path, excluded: set[str]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``tmp`` except the excluded top-level names, walked without
    following symlinks: relative path -> (kind, size, mtime_ns, sha256 or link target)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp, followlinks=False):
        base = Path(dirpath)
        if base == tmp:
            dirnames[:] = [name for name in dirnames if name not in excluded]
            filenames = [name for name in filenames if name not in excluded]
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = path.relative_to(tmp).as_posix()
            try:
                st = path.lstat()
                if path.is_symlink():
                    entries[rel] = ("link", os.readlink(path))
                elif path.is_dir():
                    entries[rel] = ("dir", st.st_mtime_ns, st.st_mode)
                else:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    entries[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, digest)
            except OSError as exc:
                entries[rel] = ("error", str(exc))
    return entries


def diff_snapshots(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots."""
    changes = [f"new: {rel}" for rel in sorted(after.keys() - before.keys())]
    changes += [f"removed: {rel}" for rel in sorted(before.keys() - after.keys())]
    changes += [
        f"changed: {rel}"
        for rel in sorted(before.keys() & after.keys())
        if before[rel] != after[rel]
    ]
    return changes
