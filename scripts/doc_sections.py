"""Generated sections of a markdown document: find them and replace their bodies.

A section is a line ``<!-- BEGIN GENERATED: name -->``, a body, and a line
``<!-- END GENERATED: name -->``. The generators (``gen_protocol_docs.py``,
``gen_config_docs.py``) render every body from the code; this module splices them in,
and refuses a document whose markers do not match what is rendered.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "UnknownSectionError",
    "generated_section_names",
    "main",
    "splice_generated",
    "update_file",
]

# Markers count only on a line of their own, so the text may quote them.
_SECTION = re.compile(
    r"^(?P<begin><!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"^(?P<end><!-- END GENERATED: (?P=name) -->)$",
    re.DOTALL | re.MULTILINE,
)
_MARKER = re.compile(r"^<!-- (?:BEGIN|END) GENERATED: .* -->$", re.MULTILINE)


class UnknownSectionError(ValueError):
    """The document's markers do not match the generated sections."""


def generated_section_names(text: str) -> list[str]:
    """Names of the well-formed generated sections of ``text``, in order."""
    return [match["name"] for match in _SECTION.finditer(text)]


def splice_generated(text: str, sections: Mapping[str, str]) -> str:
    """Replace the body of every generated section of ``text`` with ``sections[name]``.

    Raises:
        UnknownSectionError: ``text`` has a section not in ``sections``, lacks one of
            them, holds one twice, or has an unpaired marker.
    """
    names = generated_section_names(text)
    problems = []
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"sections held twice: {', '.join(duplicates)}")
    if unknown := sorted(set(names) - set(sections)):
        problems.append(f"unknown sections: {', '.join(unknown)}")
    if missing := sorted(set(sections) - set(names)):
        problems.append(f"missing sections: {', '.join(missing)}")
    markers = len(_MARKER.findall(text))
    if markers != 2 * len(names):
        problems.append(f"{markers - 2 * len(names)} unpaired or malformed GENERATED marker(s)")
    if problems:
        raise UnknownSectionError("; ".join(problems))

    def replace(match: re.Match[str]) -> str:
        body = sections[match["name"]].rstrip("\n")
        return f"{match['begin']}{body}\n{match['end']}"

    return _SECTION.sub(replace, text)


def update_file(path: Path, sections: Mapping[str, str], *, check: bool, command: str) -> int:
    """Rewrite ``path``'s generated sections (or with ``check`` only compare them).

    Returns:
        The exit code: 0 up to date (or rewritten), 1 out of date (``check``; a diff is
        printed), 2 the markers do not match the sections.
    """
    current = path.read_text(encoding="utf-8")
    try:
        updated = splice_generated(current, sections)
    except UnknownSectionError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if updated == current:
        print(f"{path.name} is up to date")
        return 0
    if check:
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                updated.splitlines(keepends=True),
                fromfile=f"{path.name} (on disk)",
                tofile=f"{path.name} (from the code)",
            )
        )
        print(f"\n{path.name} is out of date: run {command}", file=sys.stderr)
        return 1
    path.write_text(updated, encoding="utf-8")
    print(f"rewrote the generated sections of {path.name}")
    return 0


def main(
    argv: list[str] | None,
    *,
    description: str,
    default_path: Path,
    render: Callable[[], Mapping[str, str]],
    command: str,
) -> int:
    """The command line of a generator: ``[--check] [--path FILE]``; the exit code of
    :func:`update_file`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 and print a diff when the file is out of date",
    )
    parser.add_argument(
        "--path",
        type=Path,
        default=default_path,
        help=f"the document (default: {default_path.name})",
    )
    args = parser.parse_args(argv)
    return update_file(args.path, render(), check=args.check, command=command)
