#!/usr/bin/env python3
"""Rewrite the generated sections of PROTOCOL.md from the code.

Every section between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` is replaced by what
:func:`protocol.docs.render_generated_sections` renders for ``name``; the rest of the
file is left as it is.

Usage::

    .venv/bin/python scripts/gen_protocol_docs.py            # rewrite PROTOCOL.md
    .venv/bin/python scripts/gen_protocol_docs.py --check    # exit 1 with a diff if stale

Exit codes: 0 up to date (or rewritten), 1 out of date (``--check``), 2 the markers
of the file do not match the generated sections.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from protocol.docs import (  # noqa: E402
    UnknownSectionError,
    render_generated_sections,
    splice_generated,
)

DEFAULT_PATH = REPO / "PROTOCOL.md"


def main(argv: list[str] | None = None) -> int:
    """Run the generator; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 and print a diff when the file is out of date",
    )
    parser.add_argument(
        "--path",
        type=Path,
        default=DEFAULT_PATH,
        help=f"the document to update (default: {DEFAULT_PATH.relative_to(REPO)})",
    )
    args = parser.parse_args(argv)
    path: Path = args.path
    current = path.read_text(encoding="utf-8")
    try:
        updated = splice_generated(current, render_generated_sections())
    except UnknownSectionError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if updated == current:
        print(f"{path.name} is up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            updated.splitlines(keepends=True),
            fromfile=f"{path.name} (on disk)",
            tofile=f"{path.name} (from the code)",
        )
        sys.stdout.writelines(diff)
        print(
            f"\n{path.name} is out of date: run .venv/bin/python scripts/gen_protocol_docs.py",
            file=sys.stderr,
        )
        return 1
    path.write_text(updated, encoding="utf-8")
    print(f"rewrote the generated sections of {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
