#!/usr/bin/env python3
"""Rewrite the configuration tables of README.md from the settings models.

Every section between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` of README.md is one of the tables rendered here
from :mod:`signaling.config` and :mod:`rtc_worker.settings`: one row per flag, with
the flags the generated command line accepts, the environment variables (canonical
first), the default and the field's description. The rest of the file is left as it
is.

Usage::

    .venv/bin/python scripts/gen_config_docs.py            # rewrite README.md
    .venv/bin/python scripts/gen_config_docs.py --check    # exit 1 with a diff if stale

Exit codes: 0 up to date (or rewritten), 1 out of date (``--check``), 2 the markers
of the file do not match the generated sections.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydantic import BaseModel  # noqa: E402

from rtc_worker import settings_sources as signaling_sources  # noqa: E402
from rtc_worker import settings_sources as worker_sources  # noqa: E402
from rtc_worker.client_settings import (  # noqa: E402
    ClientCli,
    ClientCommand,
    DownloadCommand,
    SubmitCommand,
)
from rtc_worker.settings import (  # noqa: E402
    WorkerCli,
    WorkerSettings,
)
from scripts.doc_sections import main as run  # noqa: E402
from signaling.config import SignalingCli  # noqa: E402
from signaling.config_storage import StorageSettings  # noqa: E402

DEFAULT_PATH = REPO / "README.md"

#: The settings of the result store (the fields of its own model, and its one-shot
#: cleanup), documented in the README's storage section.
STORAGE_FIELDS = frozenset(StorageSettings.model_fields) | {"cleanup_once"}

_HEADER = "| flag | environment | default | meaning |\n|---|---|---|---|"
_BINARY_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_TIME_UNITS = (("days", 86400), ("h", 3600))


def _code(text: str) -> str:
    return f"`{text}`"


def _unit_hint(value: int, description: str) -> str:
    """``10 GiB`` for a byte count, ``7 days`` for seconds; empty when no round unit fits."""
    units = _BINARY_UNITS if "bytes" in description else ()
    units = _TIME_UNITS if "seconds" in description else units
    for name, size in units:
        if value >= size and value % size == 0 and value // size < 1024:
            count = value // size
            return f"{count} {name[:-1] if name == 'days' and count == 1 else name}"
    return ""


def default_cell(model: type[BaseModel], name: str) -> str:
    """The default of ``model.name`` as the README shows it."""
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, list):
        return _code(",".join(str(item) for item in value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        hint = _unit_hint(value, field.description or "")
        return f"{_code(str(value))} ({hint})" if hint else _code(str(value))
    return _code(str(value))


def env_cell(variables: tuple[str, ...]) -> str:
    """The canonical variable, then the older names still accepted."""
    names = [_code(variable) for variable in variables]
    if len(names) > 1:
        return f"{names[0]} (or {', '.join(names[1:])})"
    return "".join(names)


def table(line: Any, command: str, model: type[BaseModel], names: Iterable[str]) -> str:
    """The rows of ``names`` of ``model``, whose flags ``line`` holds under ``command.``."""
    rows = [_HEADER]
    for name in names:
        field = model.model_fields[name]
        dest = field.validation_alias if isinstance(field.validation_alias, str) else name
        flags = ", ".join(_code(flag) for flag in line.flags[command + dest])
        if isinstance(field.get_default(call_default_factory=True), list):
            flags += " (repeatable)"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| {flags} | {env_cell(line.variables[command + dest])} "
            f"| {default_cell(model, name)} | {meaning} |"
        )
    return "\n".join(rows)


def _own_fields(model: type[BaseModel], base: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name not in base.model_fields]


def render_sections() -> dict[str, str]:
    """Every generated section of README.md, by name."""
    signaling = signaling_sources.CommandLine(SignalingCli, "rtc-signaling")
    server = [name for name in SignalingCli.model_fields if name not in STORAGE_FIELDS]
    store = [name for name in SignalingCli.model_fields if name in STORAGE_FIELDS]
    worker = worker_sources.CommandLine(WorkerCli, "rtc-worker")
    client = worker_sources.CommandLine(ClientCli, "rtc-client")
    client_tables = (
        "**`rtc-client workers` and `rtc-client submit`**\n\n"
        + table(client, "submit.", ClientCommand, list(ClientCommand.model_fields))
        + "\n\n**`rtc-client submit`**, besides the flags above\n\n"
        + table(client, "submit.", SubmitCommand, _own_fields(SubmitCommand, ClientCommand))
        + "\n\n**`rtc-client download`**\n\n"
        + table(client, "download.", DownloadCommand, list(DownloadCommand.model_fields))
        + "\n\n`rtc-client --version` prints the version."
    )
    return {
        "config-rtc-signaling": table(signaling, "", SignalingCli, server),
        "config-rtc-signaling-storage": table(signaling, "", SignalingCli, store),
        "config-rtc-worker-serve": table(
            worker, "serve.", WorkerSettings, list(WorkerSettings.model_fields)
        ),
        "config-rtc-client": client_tables,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the generator; returns the exit code."""
    return run(
        argv,
        description="Rewrite the configuration tables of README.md from the settings models.",
        default_path=DEFAULT_PATH,
        render=render_sections,
        command=".venv/bin/python scripts/gen_config_docs.py",
    )


if __name__ == "__main__":
    sys.exit(main())
