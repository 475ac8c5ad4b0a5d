"""PROTOCOL.md stays true to the code.

* Its generated sections equal what :mod:`protocol.docs` renders now (change a table,
  an enum or a limit without running ``scripts/gen_protocol_docs.py`` and this fails).
* Every frame type, error code and PATH_ERROR reason is documented.
* Every worked example decodes: data-channel frames with :func:`protocol.decode` (and
  re-encode to the same text), signaling frames with :mod:`protocol.signaling`.
* The descriptions kept in :mod:`protocol.docs` cover every state, code and event,
  and say what the comments in the source say.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from rtc_worker.storage.paths import PathErrorKind

from protocol import FRAME_TYPES, ProtocolErrorFrame, RemoteProtocolError, decode, docs, encode
from protocol.errors import ErrorCode, TransferErrorCode
from protocol.job import CLIENT_EVENTS, INTERNAL_EVENTS, TRANSITIONS, JobState
from protocol.signaling import (
    ErrorFrame,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)
from protocol.transfer import (
    RECEIVER_INTERNAL_EVENTS,
    RECEIVER_PEER_EVENTS,
    RECEIVER_TRANSITIONS,
    SENDER_LOCAL_EVENTS,
    SENDER_PEER_EVENTS,
    SENDER_TRANSITIONS,
    ReceiverState,
    SenderState,
)

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_MD = REPO / "PROTOCOL.md"
SCRIPT = REPO / "scripts" / "gen_protocol_docs.py"

ERROR_ENUMS: tuple[type[Enum], ...] = (ErrorCode, TransferErrorCode, SignalingErrorCode)
STATE_ENUMS: tuple[type[Enum], ...] = (JobState, ReceiverState, SenderState)


@pytest.fixture(scope="module")
def text() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def fenced_blocks(text: str, info: str) -> list[tuple[int, list[str]]]:
    """(line number of the opening fence, lines) of every ```info block."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if current is None:
            if line.strip() == f"```{info}":
                current, start = [], number
        elif line.strip() == "```":
            blocks.append((start, current))
            current = None
        else:
            current.append(line)
    assert current is None, f"```{info} block opened at line {start} is never closed"
    return blocks


# ------------------------------------------------------------------ generated sections


def test_generated_sections_are_up_to_date(text: str) -> None:
    expected = docs.splice_generated(text, docs.render_generated_sections())
    if expected != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "PROTOCOL.md",
                "rendered from the code",
            )
        )
        pytest.fail(
            "PROTOCOL.md is out of date; run .venv/bin/python scripts/gen_protocol_docs.py\n" + diff
        )


def test_every_generated_section_is_in_the_document(text: str) -> None:
    assert sorted(docs.generated_section_names(text)) == sorted(docs.render_generated_sections())


def test_rendering_is_deterministic() -> None:
    assert docs.render_generated_sections() == docs.render_generated_sections()


@pytest.mark.parametrize(
    ("render", "table", "sent"),
    [
        (docs.job_session_table, TRANSITIONS, ()),
        (docs.receiver_table, RECEIVER_TRANSITIONS, ()),
        (docs.sender_table, SENDER_TRANSITIONS, SENDER_LOCAL_EVENTS),
    ],
    ids=["job-session", "receiver", "sender"],
)
def test_transition_tables_have_one_row_per_entry(render, table, sent) -> None:
    rows = render().splitlines()[2:]
    cells = [tuple(cell.strip() for cell in row.strip("|").split(" | ")) for row in rows]
    expected = {
        (state.name, docs._cell(docs.event_name(event, sent=event in sent)), next_state.name)
        for (state, event), next_state in table.items()
    }
    assert len(cells) == len(table)
    assert set(cells) == expected
    enum = type(next(iter(table))[0])
    order = [member.name for member in enum]
    states = [state for state, _, _ in cells]
    assert states == sorted(states, key=order.index), "rows are grouped by state, in enum order"


def test_sender_marks_the_frames_it_sends() -> None:
    table = docs.sender_table()
    assert "| IDLE | `FILE_META` (sent) | AWAIT_READY |" in table
    assert "| SENDING | `END_OF_FILE` (sent) | AWAIT_RECEIVED |" in table


def test_wire_events_are_named_as_on_the_wire() -> None:
    from protocol.messages import Chunk, FileMeta, JobStart

    assert docs.event_name(FileMeta) == "`FILE_META`"
    assert docs.event_name(Chunk) == "binary chunk"
    assert "`SHARED_STORAGE_JOB::start`" in docs.event_name(JobStart)
    assert docs.event_name(INTERNAL_EVENTS[0]).endswith(f"(`{INTERNAL_EVENTS[0].__name__}`)")


def test_every_table_event_has_a_name() -> None:
    events = {
        event
        for table in (TRANSITIONS, RECEIVER_TRANSITIONS, SENDER_TRANSITIONS)
        for _, event in table
    }
    events |= {
        *CLIENT_EVENTS,
        *INTERNAL_EVENTS,
        *RECEIVER_PEER_EVENTS,
        *RECEIVER_INTERNAL_EVENTS,
        *SENDER_PEER_EVENTS,
        *SENDER_LOCAL_EVENTS,
    }
    for event in events:
        assert docs.event_name(event)
    internal = {event.__name__ for event in (*INTERNAL_EVENTS, *RECEIVER_INTERNAL_EVENTS)}
    assert set(docs.INTERNAL_EVENT_NAMES) == internal, "stale or missing INTERNAL_EVENT_NAMES"


def test_unknown_internal_event_is_an_error() -> None:
    class Mystery:
        pass

    with pytest.raises(ValueError, match="INTERNAL_EVENT_NAMES"):
        docs.event_name(Mystery)


# ------------------------------------------------------------------ descriptions


@pytest.mark.parametrize("enum", STATE_ENUMS, ids=lambda e: e.__name__)
def test_every_state_is_described(enum: type[Enum]) -> None:
    assert set(docs.STATE_DESCRIPTIONS[enum]) == {member.name for member in enum}
    table = docs.states_table(enum)
    for member in enum:
        assert f"| `{member.name}` |" in table


@pytest.mark.parametrize("enum", ERROR_ENUMS, ids=lambda e: f"{e.__module__}.{e.__name__}")
def test_every_error_code_is_described(enum: type[Enum]) -> None:
    assert set(docs.ERROR_CODE_DESCRIPTIONS[enum]) == {member.name for member in enum}
    table = docs.error_codes_table(enum)
    for member in enum:
        assert f"| `{member.value}` |" in table


def test_combined_error_table_names_the_frame() -> None:
    table = docs.error_codes_table()
    assert len(table.splitlines()) == 2 + sum(len(enum) for enum in ERROR_ENUMS)
    assert "| `PROTOCOL_ERROR` | `WORKER_BUSY` |" in table
    assert "| `TRANSFER_ERROR` | `HASH_MISMATCH` |" in table


def test_missing_description_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    states = dict(docs.STATE_DESCRIPTIONS[JobState])
    del states["RUNNING"]
    monkeypatch.setitem(docs.STATE_DESCRIPTIONS, JobState, states)
    with pytest.raises(ValueError, match="RUNNING"):
        docs.states_table(JobState)


def _normalize(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def member_docs(enum: type[Enum]) -> dict[str, str]:
    """Each member's ``#:`` comment (the lines above it) or docstring (the string after
    it), read from the source."""
    source_file = inspect.getsourcefile(enum)
    assert source_file is not None
    source = Path(source_file).read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    (cls,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == enum.__name__
    ]
    found: dict[str, str] = {}
    body = cls.body
    for index, node in enumerate(body):
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        following = body[index + 1] if index + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            found[name] = _normalize(following.value.value)
            continue
        comment: list[str] = []
        line = node.lineno - 2
        while line >= 0 and lines[line].strip().startswith("#:"):
            comment.insert(0, lines[line].strip()[2:])
            line -= 1
        if comment:
            found[name] = _normalize(" ".join(comment))
    return found


@pytest.mark.parametrize("enum", STATE_ENUMS + ERROR_ENUMS, ids=lambda e: e.__name__)
def test_descriptions_match_the_source(enum: type[Enum]) -> None:
    described = {
        **docs.STATE_DESCRIPTIONS.get(enum, {}),
        **docs.ERROR_CODE_DESCRIPTIONS.get(enum, {}),
    }
    in_source = member_docs(enum)
    assert set(in_source) == {member.name for member in enum}, "a member has no comment"
    for name, comment in in_source.items():
        assert _normalize(described[name]) == comment, (
            f"{enum.__name__}.{name}: update protocol/docs.py to say what the source says "
            "(then run scripts/gen_protocol_docs.py)"
        )


# ------------------------------------------------------------------ coverage of the document


def test_every_frame_type_is_documented(text: str) -> None:
    assert set(docs.frame_classes()) == set(FRAME_TYPES)
    for frame_type in FRAME_TYPES:
        assert f"`{frame_type}" in text, f"{frame_type} is not in PROTOCOL.md"
        assert f"#### `{frame_type}" in text or frame_type == "SHARED_STORAGE_JOB", (
            f"{frame_type} has no section in PROTOCOL.md"
        )
    assert "SHARED_STORAGE_JOB::start" in text
    assert "FILE_META::{name}:{size}:{gui}" in text


@pytest.mark.parametrize("enum", ERROR_ENUMS, ids=lambda e: f"{e.__module__}.{e.__name__}")
def test_every_error_code_is_documented(text: str, enum: type[Enum]) -> None:
    for member in enum:
        assert f"`{member.value}`" in text, f"{enum.__name__}.{member.name} is not in PROTOCOL.md"


def test_every_path_error_reason_is_documented(text: str) -> None:
    for kind in PathErrorKind:
        assert f"| `{kind.value}` |" in text, f"PATH_ERROR reason {kind.value!r} is not documented"


def test_the_fuzzing_section_names_the_tools(text: str) -> None:
    section = text.split("## 7. Fuzzing your client", 1)[1]
    for name in (
        "protocol.strategies",
        "messages()",
        "frames()",
        "malformed_frames()",
        "exchanges()",
        "signaling_frames()",
        "malformed_signaling_frames()",
        "job_ids()",
        "paths()",
        "file_names()",
        "sha256_hex()",
        "@given",
        "scripts/fuzz_worker.py --frames N --seed S",
        "scripts/fuzz_atheris.py",
        ".[fuzz]",
    ):
        assert name in section, name


def test_the_documented_strategies_exist(text: str) -> None:
    strategies = pytest.importorskip("protocol.strategies")
    section = text.split("## 7. Fuzzing your client", 1)[1]
    named = set(re.findall(r"`([a-z_0-9]+)\(\)`", section))
    assert len(named) >= 10
    for name in sorted(named):
        assert callable(getattr(strategies, name, None)), f"protocol.strategies.{name} is missing"
    for script in ("fuzz_worker.py", "fuzz_atheris.py"):
        assert (REPO / "scripts" / script).is_file(), f"scripts/{script} is documented"


# ------------------------------------------------------------------ worked examples

_FRAME_LINE = re.compile(r"(?P<dir>->|<-|!>) (?P<frame>.*)")
_BINARY = re.compile(r"\(binary(?:: [0-9]+ bytes(?:, [0-9]+-[0-9]+)?)?\)")


def test_frame_examples_decode(text: str) -> None:
    blocks = fenced_blocks(text, "frames")
    assert len(blocks) >= 12, "one worked exchange per flow"
    seen: set[str] = set()
    for start, lines in blocks:
        pending_code: str | None = None
        for offset, line in enumerate(lines, start=1):
            where = f"PROTOCOL.md:{start + offset}"
            if not line.strip() or line.startswith("#"):
                continue
            match = _FRAME_LINE.fullmatch(line)
            assert match, f"{where}: not '-> frame', '<- frame', '!> frame' or '# comment'"
            direction, frame = match["dir"], match["frame"]
            if pending_code is not None:
                assert direction == "<-", f"{where}: a refused frame is followed by its answer"
                answer = decode(frame)
                assert isinstance(answer, ProtocolErrorFrame), where
                assert answer.code == pending_code, f"{where}: decode says {pending_code}"
                pending_code = None
            if frame.startswith("(binary"):
                assert _BINARY.fullmatch(frame), f"{where}: binary lines are (binary: N bytes, a-b)"
                assert direction != "!>", where
                continue
            if direction == "!>":
                with pytest.raises(RemoteProtocolError) as refused:
                    decode(frame)
                pending_code = str(refused.value.code)
                continue
            message = decode(frame)
            assert encode(message) == frame, f"{where}: not the canonical form of {message!r}"
            seen.add(frame.partition("::")[0])
        assert pending_code is None, f"block at line {start}: a refused frame has no answer"
    for frame_type in (
        "JOB_ID", "SHARED_INPUT_PATH", "SHARED_OUTPUT_PATH", "JOB_START", "SHARED_STORAGE_JOB",
        "JOB_CANCEL", "RESULTS_REQUEST", "PATH_VALIDATED", "PATH_ERROR", "JOB_LOG",
        "JOB_METRICS", "JOB_COMPLETE", "JOB_FAILED", "PROTOCOL_ERROR", "FILE_META",
        "FILE_READY", "FILE_EXISTS", "FILE_PROGRESS", "END_OF_FILE", "FILE_RECEIVED",
        "TRANSFER_ERROR", "FILE_CANCEL", "RESULTS_VIA_STORAGE", "RESULTS_STORED",
    ):  # fmt: skip
        assert frame_type in seen, f"no worked example shows {frame_type}"


def test_binary_example_ranges_add_up(text: str) -> None:
    for _, lines in fenced_blocks(text, "frames"):
        for line in lines:
            found = re.search(r"\(binary: ([0-9]+) bytes, ([0-9]+)-([0-9]+)\)", line)
            if found:
                size, first, last = map(int, found.groups())
                assert last - first + 1 == size, line


_SIGNALING_LINE = re.compile(r"(?P<peer>[A-Za-z0-9._-]{1,64}) (?P<dir>->|<-|!>) (?P<frame>.*)")


def test_signaling_examples_parse(text: str) -> None:
    blocks = fenced_blocks(text, "signaling")
    assert blocks, "a signaling exchange is shown"
    seen: set[str] = set()
    for start, lines in blocks:
        pending: dict[str, str] = {}
        for offset, line in enumerate(lines, start=1):
            where = f"PROTOCOL.md:{start + offset}"
            if not line.strip() or line.startswith("#"):
                continue
            match = _SIGNALING_LINE.fullmatch(line)
            assert match, f"{where}: not 'peer -> json', 'peer <- json', 'peer !> text'"
            peer, direction, frame = match["peer"], match["dir"], match["frame"]
            if direction == "->" and frame == "(binary)":
                pending[peer] = SignalingErrorCode.INVALID_FRAME
                continue
            if direction == "!>":
                with pytest.raises(SignalingError) as refused:
                    parse_client_frame(frame)
                pending[peer] = str(refused.value.code)
                continue
            if direction == "->":
                parsed = parse_client_frame(frame)
                seen.add(parsed.type)
                continue
            parsed = parse_server_frame(frame)
            seen.add(parsed.type)
            assert dump_frame(parsed) == frame, f"{where}: not what the server writes"
            if peer in pending:
                assert isinstance(parsed, ErrorFrame), f"{where}: the refusal is answered"
                assert parsed.code == pending.pop(peer), where
        assert not pending, f"block at line {start}: a refused frame has no answer"
    assert {"register", "registered", "list_peers", "peers", "offer", "answer", "candidate",
            "error"} <= seen  # fmt: skip


def test_relayed_frames_carry_the_senders_id(text: str) -> None:
    (_, lines), *_ = fenced_blocks(text, "signaling")
    relayed = [
        json.loads(line.split(" <- ", 1)[1])
        for line in lines
        if " <- " in line and '"from"' in line
    ]
    assert relayed
    sent_by = {"offer": "app-1", "answer": "gpu-1", "candidate": "app-1"}
    for frame in relayed:
        assert frame["from"] == sent_by[frame["type"]]


# ------------------------------------------------------------------ splicing and the script


def test_splice_replaces_bodies_and_keeps_the_rest() -> None:
    doc = (
        "intro `<!-- BEGIN GENERATED: quoted -->` stays\n"
        "<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\n"
        "middle\n"
        "<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\nend\n"
    )
    out = docs.splice_generated(doc, {"a": "new A", "b": "| x |\n"})
    assert out == (
        "intro `<!-- BEGIN GENERATED: quoted -->` stays\n"
        "<!-- BEGIN GENERATED: a -->\nnew A\n<!-- END GENERATED: a -->\n"
        "middle\n"
        "<!-- BEGIN GENERATED: b -->\n| x |\n<!-- END GENERATED: b -->\nend\n"
    )
    assert docs.splice_generated(out, {"a": "new A", "b": "| x |"}) == out


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n", "missing sections: b"),
        (
            "<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n"
            "<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\n"
            "<!-- BEGIN GENERATED: c -->\n<!-- END GENERATED: c -->\n",
            "unknown sections: c",
        ),
        (
            "<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n"
            "<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n"
            "<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\n",
            "held twice: a",
        ),
        (
            "<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n"
            "<!-- BEGIN GENERATED: b -->\nno end\n",
            "unpaired",
        ),
    ],
)
def test_splice_refuses_mismatched_markers(doc: str, problem: str) -> None:
    with pytest.raises(docs.UnknownSectionError, match=problem):
        docs.splice_generated(doc, {"a": "A", "b": "B"})


def test_script_check_reports_a_stale_document(tmp_path: Path, text: str) -> None:
    stale = tmp_path / "PROTOCOL.md"
    stale.write_text(text.replace("| RUNNING | job finished", "| RUNNING | job ended"), "utf-8")
    run = [sys.executable, str(SCRIPT), "--path", str(stale)]
    checked = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 1, checked.stderr
    assert "+| RUNNING | job finished" in checked.stdout
    assert stale.read_text("utf-8") != text, "--check does not write"
    rewritten = subprocess.run(run, capture_output=True, text=True, check=False)
    assert rewritten.returncode == 0, rewritten.stderr
    assert stale.read_text("utf-8") == text
    again = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stdout


def test_docs_module_is_sans_io() -> None:
    tree = ast.parse(Path(inspect.getsourcefile(docs) or "").read_text("utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
            pytest.fail("protocol/docs.py opens a file")
    forbidden = {"asyncio", "aiortc", "aiohttp", "os", "pathlib", "io", "shutil", "socket",
                 "subprocess", "rtc_worker", "signaling"}  # fmt: skip
    assert not imported & forbidden, imported & forbidden


def test_an_undescribed_error_code_is_refused() -> None:
    from enum import StrEnum

    from protocol import docs

    class NewCodes(StrEnum):
        SOMETHING_NEW = "SOMETHING_NEW"

    with pytest.raises(ValueError, match="SOMETHING_NEW"):
        docs.error_codes_table(NewCodes)


def test_a_frame_type_without_a_class_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocol import docs

    monkeypatch.setattr(docs, "FRAME_TYPES", frozenset({"NO_SUCH_FRAME"}))
    with pytest.raises(ValueError, match="NO_SUCH_FRAME"):
        docs.frame_classes()


def test_byte_sizes_are_written_in_the_largest_exact_unit() -> None:
    from protocol import docs

    assert docs._bytes(65536) == "65536 bytes (64 KiB)"
    assert docs._bytes(2 * 1024 * 1024) == "2097152 bytes (2 MiB)"
    assert docs._bytes(1000) == "1000 bytes"
