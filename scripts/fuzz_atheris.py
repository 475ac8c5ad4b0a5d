#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of the frame codec and of path validation.

Usage::

    .venv/bin/pip install -e ".[fuzz]"          # atheris (a wheel, or clang + libFuzzer)
    .venv/bin/python scripts/fuzz_atheris.py decode -max_total_time=60
    .venv/bin/python scripts/fuzz_atheris.py paths -max_total_time=60
    .venv/bin/python scripts/fuzz_atheris.py decode corpus/decode -runs=200000

The first argument names the target; every later argument goes to libFuzzer as is
(``-max_total_time``, ``-runs``, ``-max_len``, ``-jobs``, a corpus folder, or a crash
file to replay). Unless ``-dict=`` is given, a dictionary of the grammar's tokens
(frame types, ``::``, tree entries) is written to a temporary file and passed along.

Targets and their invariants (anything else raised is a crash: libFuzzer stops and
saves the input as ``crash-<sha1>`` in the current folder, exit status non-zero):

``decode``
    The input goes to :func:`protocol.decode` as a binary frame and as a text frame
    (UTF-8 with ``surrogateescape``, so invalid bytes become lone surrogates), under
    the default limits and under tiny ones. Each call returns a
    :class:`protocol.Message` or raises :class:`protocol.ProtocolError`. A decoded
    message must also survive ``decode(encode(message)) == message``.

``paths``
    The input (UTF-8 with ``surrogateescape``), after a prefix chosen by its first byte
    among the entries of a small real tree, is split the worker's way
    (:func:`rtc_worker.errors.user_parts`) and resolved by
    :class:`rtc_worker.storage.SafeRoot`. The root holds files, folders, a symlink to a
    folder outside the root, an absolute symlink to a file outside it, a symlink that
    stays inside, and a symlink loop. Each call gives an absolute path that is the root
    or inside it (also after resolving it again) and whose input had no ``..``
    component, or raises :class:`rtc_worker.storage.StorageError`.

Without atheris the script says so and exits 0, so it can sit in any pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:
    atheris = None

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ("decode", "paths")
_WORKDIR_ENV = "FUZZ_ATHERIS_WORKDIR"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ decode


def decode_target() -> tuple[Callable[[bytes], None], list[str]]:
    """The ``decode`` test function and its dictionary tokens."""
    import loguru  # noqa: F401  (imported first so only our modules are instrumented)
    import pydantic  # noqa: F401

    with atheris.instrument_imports(include=["protocol"]):
        import protocol
        from protocol.codec import FRAME_TYPES
        from protocol.limits import Limits

    tiny = Limits(max_text_frame_bytes=64, max_binary_frame_bytes=64, max_path_bytes=16)
    roomy = Limits(max_text_frame_bytes=1 << 30, max_binary_frame_bytes=1 << 30)

    def check(frame: str | bytes, limits: Limits) -> None:
        try:
            message = protocol.decode(frame, limits)
        except protocol.ProtocolError:
            return
        if not isinstance(message, protocol.Message):
            raise AssertionError(f"decode returned {type(message).__name__}: {message!r}")
        again = protocol.decode(protocol.encode(message), roomy)
        if again != message:
            raise AssertionError(f"round trip changed {message!r} into {again!r}")

    def test_one_input(data: bytes) -> None:
        text = _text(data)
        for limits in (protocol.DEFAULT_LIMITS, tiny):
            check(data, limits)
            check(text, limits)

    tokens = [*sorted(FRAME_TYPES), *(f"{name}::" for name in sorted(FRAME_TYPES))]
    tokens += ["::", ":", "start"]
    tokens += ["input", "output", '{"validation_ms":', "a" * 64, "0" * 19]
    return test_one_input, tokens


# ------------------------------------------------------------------ paths

#: Prefixes the first input byte chooses from: entries of the tree built below.
PATH_PREFIXES = (
    "",
    "inputs/",
    "inputs/data.zip",
    "inputs/sub/",
    "out_dir/",
    "out_file/",
    "out_abs",
    "inside/",
    "loop_a/",
    "inputs/sub/up/",
    "missing/",
    "..",
    "./",
    "\\",
)


def build_tree(base: Path) -> Path:
    """A shared root with symlinks out of it; returns the resolved root.

    ``base/outside/`` holds ``secret.txt``; ``base/root/`` holds ``inputs/data.zip``,
    ``inputs/sub/``, ``out_dir -> ../outside``, ``out_file -> ../outside/secret.txt``,
    ``out_abs -> <absolute path of secret.txt>``, ``inside -> inputs``,
    ``inputs/sub/up -> ../../..`` (the parent of the root) and
    ``loop_a -> loop_b -> loop_a``.
    """
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("outside the root\n")
    root = base / "root"
    (root / "inputs" / "sub").mkdir(parents=True)
    (root / "inputs" / "data.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    (root / "out_dir").symlink_to(Path("..") / "outside")
    (root / "out_file").symlink_to(Path("..") / "outside" / "secret.txt")
    (root / "out_abs").symlink_to(secret.resolve())
    (root / "inside").symlink_to("inputs")
    (root / "inputs" / "sub" / "up").symlink_to(Path("..") / ".." / "..")
    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    return Path(os.path.realpath(root))


def paths_target(root: Path) -> tuple[Callable[[bytes], None], list[str]]:
    """The ``paths`` test function over the tree at ``root``, and its dictionary tokens."""
    import loguru  # noqa: F401  (imported first so only our modules are instrumented)
    import magic  # noqa: F401

    with atheris.instrument_imports(include=["rtc_worker.storage", "protocol.names"]):
        from rtc_worker.paths import user_parts
        from rtc_worker.storage import SafeRoot, StorageError

    safe = SafeRoot(root)
    root_text = str(root)

    def inside(path: str) -> bool:
        return path == root_text or path.startswith(root_text + os.sep)

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        user_path = PATH_PREFIXES[data[0] % len(PATH_PREFIXES)] + _text(data[1:])
        try:
            result = safe.absolute(user_parts(user_path))
        except StorageError:
            return
        if not isinstance(result, Path) or not result.is_absolute():
            raise AssertionError(f"{user_path!r} gave {result!r}, not an absolute Path")
        if not inside(str(result)):
            raise AssertionError(f"{user_path!r} resolved outside the root: {result}")
        again = os.path.realpath(result)
        if not inside(again):
            raise AssertionError(f"{user_path!r} gave {result}, which resolves to {again}")
        if ".." in user_path.replace("\\", "/").split("/"):
            raise AssertionError(f"{user_path!r} has a '..' component but was accepted")

    tokens = ["/", "\\", "..", ".", "./", "../", *(p for p in PATH_PREFIXES if p)]
    tokens += ["data.zip", "secret.txt", "outside", "root", "\uff0e\uff0e", "C:", "\x00"]
    return test_one_input, tokens


# ------------------------------------------------------------------ main


def _write_dict(tokens: list[str], folder: Path) -> Path:
    """A libFuzzer dictionary file: one quoted, escaped token per line."""
    path = folder / "tokens.dict"
    lines = []
    for token in tokens:
        raw = token.encode("utf-8", "surrogateescape")
        escaped = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in raw
        )
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def _fuzz(target: str, fuzzer_args: list[str], workdir: Path) -> None:
    """Build the target in ``workdir`` and hand over to libFuzzer (never returns)."""
    own = workdir / f"run-{os.getpid()}"
    own.mkdir()
    if target == "decode":
        test_one_input, tokens = decode_target()
    else:
        tree = own / "tree"
        tree.mkdir()
        test_one_input, tokens = paths_target(build_tree(tree))
    if not any(arg.startswith("-dict=") for arg in fuzzer_args):
        fuzzer_args = [*fuzzer_args, f"-dict={_write_dict(tokens, own)}"]
    atheris.Setup([sys.argv[0], *fuzzer_args], test_one_input)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    if atheris is None:
        print(
            "atheris is not installed: nothing to fuzz. Install it with "
            "'.venv/bin/pip install -e \".[fuzz]\"' (a wheel, or clang with libFuzzer).",
            file=sys.stderr,
        )
        return 0
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]", file=sys.stderr)
        return 2
    workdir = os.environ.get(_WORKDIR_ENV)
    if workdir is not None:
        _fuzz(argv[1], argv[2:], Path(workdir))
        return 0  # not reached: libFuzzer exits the process
    # libFuzzer ends the process without running Python's clean-up, so the fuzzing runs
    # in a child and this process removes the temporary tree and dictionary afterwards.
    with tempfile.TemporaryDirectory(prefix="fuzz-atheris-") as tmp:
        env = {**os.environ, _WORKDIR_ENV: tmp}
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv[1:]], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
