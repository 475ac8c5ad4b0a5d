#!/usr/bin/env python3
"""Rewrite the generated sections of PROTOCOL.md from the protocol's tables.

Every section between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` is replaced by what
:func:`scripts.protocol_tables.render_sections` renders for ``name``; the rest of the
file is left as it is.

Usage::

    .venv/bin/python scripts/gen_protocol_docs.py            # rewrite PROTOCOL.md
    .venv/bin/python scripts/gen_protocol_docs.py --check    # exit 1 with a diff if stale

Exit codes: 0 up to date (or rewritten), 1 out of date (``--check``), 2 the markers of
the file do not match the generated sections.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.doc_sections import main as run  # noqa: E402
from scripts.protocol_tables import render_sections  # noqa: E402

DEFAULT_PATH = REPO / "PROTOCOL.md"


def main(argv: list[str] | None = None) -> int:
    """Run the generator; returns the exit code."""
    return run(
        argv,
        description="Rewrite the generated sections of PROTOCOL.md from the protocol's tables.",
        default_path=DEFAULT_PATH,
        render=render_sections,
        command=".venv/bin/python scripts/gen_protocol_docs.py",
    )


if __name__ == "__main__":
    sys.exit(main())
