"""README.md's configuration tables stay true to the settings models.

* Its generated sections equal what ``scripts/gen_config_docs.py`` renders now (add
  a setting or change a description without running the script and this fails).
* Every argument of every program is in a table, and every setting says what it is,
  with its unit.
* ``--check`` reports a stale file without writing it; a plain run rewrites it.
"""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

from rtc_worker.client_settings import (
    ClientCommand,
    DownloadCommand,
    SubmitCommand,
)
from rtc_worker.settings import (
    DemoCommand,
    WorkerSettings,
)
from scripts.doc_sections import generated_section_names, splice_generated
from signaling.config import SignalingCli

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SCRIPT = REPO / "scripts" / "gen_config_docs.py"

MODELS: tuple[type[BaseModel], ...] = (
    SignalingCli,
    WorkerSettings,
    DemoCommand,
    ClientCommand,
    SubmitCommand,
    DownloadCommand,
)


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text() -> str:
    return README.read_text(encoding="utf-8")


def test_generated_sections_are_up_to_date(generator: ModuleType, text: str) -> None:
    expected = splice_generated(text, generator.render_sections())
    if expected != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "README.md",
                "rendered from the settings",
            )
        )
        pytest.fail(
            "README.md is out of date; run .venv/bin/python scripts/gen_config_docs.py\n" + diff
        )


def test_every_generated_section_is_in_the_readme(generator: ModuleType, text: str) -> None:
    assert sorted(generated_section_names(text)) == sorted(generator.render_sections())


def test_rendering_is_deterministic(generator: ModuleType) -> None:
    assert generator.render_sections() == generator.render_sections()


def test_every_flag_of_the_documented_commands_is_in_a_table(generator: ModuleType) -> None:
    tables = "\n".join(generator.render_sections().values())
    lines = {
        "": generator.signaling_sources.CommandLine(SignalingCli, "rtc-signaling"),
        "serve.": generator.worker_sources.CommandLine(generator.WorkerCli, "rtc-worker"),
        "submit.": generator.worker_sources.CommandLine(generator.ClientCli, "rtc-client"),
        "download.": generator.worker_sources.CommandLine(generator.ClientCli, "rtc-client"),
    }
    for prefix, line in lines.items():
        for dest, flags in line.flags.items():
            if prefix and not dest.startswith(prefix):
                continue
            for flag in flags:
                assert f"`{flag}`" in tables, f"{flag} ({dest}) is in no README table"


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_setting_says_what_it_is_with_its_unit(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        description = field.description or ""
        assert description.endswith("."), f"{model.__name__}.{name}: {description!r}"
        if name.endswith(("_s", "_seconds", "timeout", "wait")):
            assert "seconds" in description, f"{model.__name__}.{name} gives no unit"
        if name.endswith(("_bytes", "_size")):
            assert "bytes" in description, f"{model.__name__}.{name} gives no unit"


def test_defaults_show_units_and_no_local_paths(generator: ModuleType) -> None:
    assert generator.default_cell(WorkerSettings, "max_file_size") == "`10737418240` (10 GiB)"
    assert generator.default_cell(WorkerSettings, "partial_ttl_s") == "`86400` (1 day)"
    assert generator.default_cell(WorkerSettings, "zip_max_total_bytes") == "`20000000000`"
    assert generator.default_cell(WorkerSettings, "data_dir") == "`~/.local/share/rtc-worker`"
    assert generator.default_cell(SubmitCommand, "worker") == "required"
    assert generator.env_cell(("RTC_SHARED_ROOT", "SHARED_STORAGE_ROOT")) == (
        "`RTC_SHARED_ROOT` (or `SHARED_STORAGE_ROOT`)"
    )


def test_script_check_reports_a_stale_readme(tmp_path: Path, text: str) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(text.replace("Interface to bind.", "Address to bind."), "utf-8")
    run = [sys.executable, str(SCRIPT), "--path", str(stale)]
    checked = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 1, checked.stderr
    assert "+| `--host` | `RTC_SIGNALING_HOST` | `127.0.0.1` | Interface to bind. |" in (
        checked.stdout
    )
    assert stale.read_text("utf-8") != text, "--check does not write"
    rewritten = subprocess.run(run, capture_output=True, text=True, check=False)
    assert rewritten.returncode == 0, rewritten.stderr
    assert stale.read_text("utf-8") == text
    again = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stdout


def test_script_refuses_a_readme_without_its_markers(tmp_path: Path, text: str) -> None:
    broken = tmp_path / "README.md"
    broken.write_text(text.replace("<!-- END GENERATED: config-rtc-client -->\n", ""), "utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--path", str(broken), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "config-rtc-client" in result.stderr or "unpaired" in result.stderr
