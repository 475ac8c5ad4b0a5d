"""Path validation over generated directory trees: symlinks (relative, absolute, chained,
looping, dangling, to files and to directories, inside and outside the root) and
adversarial client paths (``..``, absolute, NUL, ``//``, look-alikes such as ``．．``
``∕`` ``⁄``, very long, backslashes, trailing slashes).

Paths go the worker's way: client text checked and split (``split_path``), then
resolved and opened by :class:`~rtc_worker.storage.SafeRoot`. For every (tree, path):
resolving raises StorageError or gives a path whose real path is inside the root,
opening it as an input likewise (and checks containment first), ``exists`` is never
True for anything outside; and two trees that differ only outside the root give the
same outcome for every path (no existence oracle).

Each example builds its trees in a fresh ``tempfile.mkdtemp`` directory, removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import PathReason
from protocol.limits import DEFAULT_LIMITS
from rtc_worker.storage import StorageError
from rtc_worker.storage import StorageErrorKind as PathErrorKind
from tests.saferoot_helpers import Fs, reason

MAX_COMPONENT_BYTES = DEFAULT_LIMITS.max_name_bytes
MAX_PATH_BYTES = DEFAULT_LIMITS.max_path_bytes

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ("a", "b", "c", "lnk", "sec", "loop", "f")

#: Symlink targets; {root}, {outside} and {base} are filled in per tree. Relative ones
#: are read from the link's own directory, as the kernel does.
TARGETS = (
    "a",
    "b/c",
    "f",
    ".",
    "..",
    "../..",
    "lnk",
    "loop",
    "nonexistent",
    "a/x/y",
    "b/../a",
    "../outside",
    "../outside/sec",
    "../../outside/sec",
    "../root/a",
    "../root/f",
    "{root}",
    "{root}/a",
    "{root}/b/c",
    "{root}/lnk",
    "{outside}",
    "{outside}/sec",
    "{outside}/a",
    "{base}",
    "/",
    "/nonexistent/x",
    "/etc",
)
#: Targets of symlinks outside the root in the oracle test: they stay outside (nothing
#: outside leads back into the root or to one of its ancestors).
OUTSIDE_ONLY_TARGETS = (
    "a",
    "b/c",
    "sec",
    "lnk",
    "loop",
    "nonexistent",
    "{outside}/sec",
    "{outside}/a/b",
    "/nonexistent/x",
)

Entry = tuple[str, tuple[str, ...], str, str]  # (where, parts, kind, target)


def entries(where: tuple[str, ...], targets: tuple[str, ...]) -> st.SearchStrategy[list[Entry]]:
    return st.lists(
        st.tuples(
            st.sampled_from(where),
            st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple),
            st.sampled_from(["dir", "file", "link", "link", "fifo"]),
            st.sampled_from(targets),
        ),
        max_size=14,
    )


def build(base: Path, spec: list[Entry]) -> Path:
    """Create ``base/root`` and ``base/outside`` and the entries (dirs, then files and
    FIFOs, then symlinks; an entry that clashes with an earlier one is skipped, the same
    way in every tree). Returns the root."""
    places = {"root": base / "root", "outside": base / "outside"}
    for place in places.values():
        place.mkdir()
    order = {"dir": 0, "file": 1, "fifo": 1, "link": 2}
    for where, parts, kind, target in sorted(spec, key=lambda e: order[e[2]]):
        path = places[where].joinpath(*parts)
        try:
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "file":
                with path.open("xb") as out:
                    out.write(b"data")
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                text = target.format(root=places["root"], outside=places["outside"], base=base)
                os.symlink(text, path)
        except OSError:
            continue
    return places["root"]


@contextmanager
def trees(*specs: list[Entry]) -> Iterator[list[Fs]]:
    """Build each spec in a fresh temporary directory; remove them all afterwards."""
    bases = [Path(tempfile.mkdtemp(prefix="rtc-paths-")) for _ in specs]
    try:
        yield [Fs(build(base, spec)) for base, spec in zip(bases, specs, strict=True)]
    finally:
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)


_PIECES = st.sampled_from(
    [
        *NAMES,
        "..",
        ".",
        "",
        "．．",
        "．",
        "∕",
        "⁄",
        "／",
        "＼",
        "..∕..",
        "a∕..",
        "\\",
        "..\\..",
        "\x00",
        "a\x00",
        "\n",
        "\x7f",
        "\x85",
        "C:",
        "c:x",
        "~",
        " ",
        "..\u200b",
        "\u202e..",
        "ａ",
        "x" * (MAX_COMPONENT_BYTES + 1),
        "é" * 128,  # 256 bytes
        "x" * MAX_COMPONENT_BYTES,
        "outside",
        "root",
    ]
)
USER_PATHS = st.one_of(
    st.builds(
        lambda lead, parts, sep, trail: lead + sep.join(parts) + trail,
        st.sampled_from(["", "", "", "/", "//", "\\", "\\\\server\\share\\", "./"]),
        st.lists(_PIECES, min_size=0, max_size=6),
        st.sampled_from(["/", "/", "\\", "//"]),
        st.sampled_from(["", "", "/", "//", "\\"]),
    ),
    st.text(max_size=20),
)
#: Paths around MAX_PATH_BYTES (thousands of components: costly, so one per example).
LONG_PATHS = st.builds(
    lambda unit, extra: (unit * (MAX_PATH_BYTES // len(unit) + 2))[
        : MAX_PATH_BYTES // len(unit.encode()) * len(unit) + extra
    ],
    st.sampled_from(["a/", "lnk/", "b/c/", "é/", "a" * 255 + "/"]),
    st.integers(-3, 3),
)
RELS = st.builds(
    lambda rels, long: [*rels, *long],
    st.lists(USER_PATHS, min_size=1, max_size=12),
    st.lists(LONG_PATHS, max_size=1),
)


def inside(path: str | Path, root: Path) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def outcome(fs: Fs, rel: str) -> tuple:
    """What a client can observe for ``rel``: each answer's kind, and accepted paths
    relative to the root."""
    answers: list[object] = []
    for method in (fs.validate, fs.validate_input):
        try:
            answers.append(("ok", os.path.relpath(method(rel), fs.root)))
        except StorageError as err:
            answers.append(err.kind)
    answers.append(fs.exists(rel))
    return tuple(answers)


def symlink_in(path: Path, root: Path) -> bool:
    """Whether a component of ``path`` below ``root`` is a symlink."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if os.path.islink(current):
            return True
    return False


def check_path(fs: Fs, rel: str) -> None:
    root = fs.root
    try:
        resolved = fs.validate(rel)
    except StorageError as err:
        assert err.kind is PathErrorKind.OUTSIDE_ROOT
        resolved = None
    else:
        assert resolved.is_absolute()
        assert inside(resolved, root), (rel, resolved)
    try:
        checked = fs.validate_input(rel)
    except StorageError as err:
        if resolved is None:  # containment is decided before existence
            assert err.kind is PathErrorKind.OUTSIDE_ROOT
        else:  # every link was resolved: only missing, unreadable or special files remain
            assert err.kind in (
                PathErrorKind.NOT_FOUND,
                PathErrorKind.CORRUPTED,
                PathErrorKind.PERMISSION_DENIED,
            ), (rel, err)
    else:
        assert resolved is not None and checked == resolved
        assert inside(checked, root) and os.path.exists(checked)
    found = fs.exists(rel)
    assert isinstance(found, bool)
    if found:
        assert resolved is not None and inside(resolved, root)
        assert os.path.lexists(resolved)
    elif resolved is not None:
        assert not os.path.lexists(resolved)


@SETTINGS
@given(
    spec=entries(("root", "root", "outside"), TARGETS),
    rels=RELS,
)
def test_every_answer_stays_inside_the_root(spec: list[Entry], rels: list[str]) -> None:
    with trees(spec) as (fs,):
        for rel in [*rels, *("/".join(parts) for _, parts, _, _ in spec)]:
            check_path(fs, rel)


@SETTINGS
@given(
    inside_spec=entries(("root",), TARGETS),
    outside_spec=entries(("outside",), OUTSIDE_ONLY_TARGETS),
    delta=entries(("outside",), OUTSIDE_ONLY_TARGETS).filter(bool),
    rels=RELS,
)
def test_trees_that_differ_only_outside_give_the_same_answers(
    inside_spec: list[Entry], outside_spec: list[Entry], delta: list[Entry], rels: list[str]
) -> None:
    # Tree A has more outside the root than tree B (files, directories, symlinks that stay
    # outside, loops); inside the root they are identical. Nothing a client can ask may
    # tell them apart.
    base = inside_spec + outside_spec
    with trees(base + delta, base) as (with_more, without):
        probes = [*rels, *("/".join(parts) for _, parts, _, _ in inside_spec + delta)]
        for rel in probes:
            assert outcome(with_more, rel) == outcome(without, rel), rel


def test_a_symlink_through_outside_and_back_gives_the_same_answer() -> None:
    inside_only: list[Entry] = [
        ("root", ("c",), "dir", ""),
        ("root", ("a",), "link", "../outside/b"),
    ]
    back_in: list[Entry] = [("outside", ("b",), "link", "../root/c")]
    with trees(inside_only + back_in, inside_only) as (with_link, without):
        assert outcome(without, "a")[0] is PathErrorKind.OUTSIDE_ROOT
        assert outcome(with_link, "a") == outcome(without, "a")


def test_validate_leaves_no_symlink_in_what_it_returns() -> None:
    with trees([("root", ("a",), "link", "b/../a")]) as (fs,):
        try:
            resolved = fs.validate("a")
        except StorageError as err:  # refusing it is fine too
            assert err.kind is PathErrorKind.OUTSIDE_ROOT
            return
        assert not symlink_in(resolved, fs.root)
        assert fs.exists("a") == os.path.exists(resolved)


def test_the_trees_are_built_as_specified() -> None:
    spec: list[Entry] = [
        ("root", ("a",), "dir", ""),
        ("root", ("a", "f"), "file", ""),
        ("root", ("lnk",), "link", "{outside}/sec"),
        ("root", ("loop",), "link", "loop"),
        ("outside", ("sec",), "file", ""),
        ("root", ("a",), "file", ""),  # clashes with the directory: skipped
    ]
    with trees(spec) as (fs,):
        root = fs.root
        assert (root / "a" / "f").read_bytes() == b"data"
        assert os.readlink(root / "lnk") == str(root.parent / "outside" / "sec")
        assert (root / "lnk").read_bytes() == b"data"
        assert outcome(fs, "a/f")[:2] == (("ok", "a/f"), ("ok", "a/f"))
        assert outcome(fs, "lnk") == (
            PathErrorKind.OUTSIDE_ROOT,
            PathErrorKind.OUTSIDE_ROOT,
            False,
        )
        assert outcome(fs, "loop")[0] is PathErrorKind.OUTSIDE_ROOT
        assert outcome(fs, "nothing")[1] is PathErrorKind.NOT_FOUND


# -- property: whatever the client sends, the result is inside the root ------------------


@pytest.fixture(scope="module")
def property_tree(tmp_path_factory: pytest.TempPathFactory) -> Fs:
    base = tmp_path_factory.mktemp("property")
    root = base / "root"
    outside = base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "a" / "file").write_bytes(b"f")
    (root / "out").symlink_to(outside)
    (root / "a" / "up").symlink_to("../..")
    (root / "in").symlink_to("a/b")
    (root / "loop").symlink_to("loop")
    return Fs(root)


_PIECES = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b",
        "file",
        "out",
        "up",
        "in",
        "loop",
        "secret",
        "．．",
        "∕",
        "／",
        "\\",
        "/",
        "\x00",
        "C:",
        "~",
        "ａ",
        "..\u200b",
        " ",
        "\u202e",
        "..\\..",
        "\t",
    ]
)
_USER_PATHS = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda parts, sep: sep.join(parts),
        st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=8),
        st.sampled_from(["/", "\\"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(rel=_USER_PATHS)
def test_property_result_is_always_inside_root(property_tree: Fs, rel: str) -> None:
    fs = property_tree
    root = str(fs.root)
    has_parent_ref = ".." in rel.replace("\\", "/").split("/")
    try:
        resolved = fs.validate(rel)
    except StorageError as err:
        assert reason(err, rel) == f"{PathReason[err.kind.name].value}: {rel}"
        assert fs.exists(rel) is False
        return
    assert not has_parent_ref
    real = os.path.realpath(resolved)
    assert real == root or real.startswith(root + os.sep)
    try:
        checked = fs.validate_input(rel)
    except StorageError as err:
        assert err.kind in (PathErrorKind.NOT_FOUND, PathErrorKind.CORRUPTED)
    else:
        assert checked == resolved
        assert fs.exists(rel)
