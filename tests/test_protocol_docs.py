"""PROTOCOL.md stays true to the code.

* Its generated sections are what ``scripts/protocol_tables.py`` renders now
  (``scripts/gen_protocol_docs.py --check``), and the tables render what the code says.
* Every frame type, error code, PATH_ERROR reason and state is documented.
* Every worked example decodes: data-channel frames with :func:`protocol.decode` (and
  re-encode to the same text), signaling frames with :mod:`protocol.signaling`.
* The descriptions are the ``#:`` comments of the source; a member without one is refused.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from enum import Enum, StrEnum
from pathlib import Path

import pytest

import protocol.testing
from protocol import FRAME_TYPES, ProtocolErrorFrame, RemoteProtocolError, decode, encode
from protocol import events as ev
from protocol.codec import MESSAGE_TYPES
from protocol.connection import Capabilities
from protocol.errors import ErrorCode, PathReason, RelayEndCode, TransferErrorCode
from protocol.job import CLIENT_TABLE, WORKER_TABLE, JobState, Outcome, Pending
from protocol.limits import Limits
from protocol.messages import JobStart, ResultsRequest
from protocol.routes import Part, Role, decision, states_of
from protocol.sender import SENDER_TABLE, SenderOp, SenderState
from protocol.signaling import (
    ErrorFrame,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)
from protocol.transfer import RECEIVER_TABLE, ReceiverState
from protocol.transfer_messages import Chunk, FileMeta, FileMetaLegacy
from scripts import doc_sections, gen_protocol_docs, protocol_tables
from scripts.protocol_tables import render_sections
from tests.exchange_replay import C2W, W2C, Replay

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_MD = REPO / "PROTOCOL.md"
SCRIPT = REPO / "scripts" / "gen_protocol_docs.py"

ERROR_ENUMS: tuple[type[Enum], ...] = (
    ErrorCode,
    TransferErrorCode,
    RelayEndCode,
    SignalingErrorCode,
)
STATE_ENUMS: tuple[type[Enum], ...] = (JobState, ReceiverState, SenderState, Pending, Outcome)


@pytest.fixture(scope="module")
def text() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    return render_sections()


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


def rows(table: str) -> list[tuple[str, ...]]:
    """The cells of a rendered markdown table, header and rule left out."""
    return [
        tuple(cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1])
        for line in table.splitlines()[2:]
    ]


# ===================================================================== generated sections


def test_the_generator_finds_protocol_md_up_to_date() -> None:
    checked = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, (
        "PROTOCOL.md is out of date; run .venv/bin/python scripts/gen_protocol_docs.py\n"
        + checked.stdout
        + checked.stderr
    )
    assert "PROTOCOL.md is up to date" in checked.stdout


def test_check_mode_fails_on_a_stale_document_and_the_rewrite_fixes_it(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "PROTOCOL.md"
    stale.write_text(text.replace("| RUNNING | *job finished* | IDLE |", "| RUNNING | x | IDLE |"))
    monkeypatch.setattr(gen_protocol_docs, "DEFAULT_PATH", stale)
    assert gen_protocol_docs.main(["--check"]) == 1
    out = capsys.readouterr()
    assert "+| RUNNING | *job finished* | IDLE |" in out.out
    assert "out of date: run .venv/bin/python scripts/gen_protocol_docs.py" in out.err
    assert stale.read_text("utf-8") != text, "--check does not write"
    assert gen_protocol_docs.main([]) == 0
    assert stale.read_text("utf-8") == text
    assert gen_protocol_docs.main(["--check"]) == 0
    with pytest.raises(SystemExit) as exit_info:  # a usage error, as argparse reports it
        gen_protocol_docs.main(["--check", "--nope"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
    stale.write_text("no sections at all\n")
    assert gen_protocol_docs.main(["--check"]) == 2


def test_every_generated_section_is_in_the_document_once(
    text: str, sections: dict[str, str]
) -> None:
    assert sorted(doc_sections.generated_section_names(text)) == sorted(sections)


def test_rendering_is_deterministic(sections: dict[str, str]) -> None:
    assert render_sections() == sections


@pytest.mark.parametrize(
    ("name", "table", "states"),
    [
        ("job-worker", WORKER_TABLE, list(JobState)),
        ("receiver", RECEIVER_TABLE, list(ReceiverState)),
        ("sender", SENDER_TABLE, list(SenderState)),
    ],
)
def test_transition_tables_have_one_row_per_entry(
    sections: dict[str, str], name: str, table: dict[object, object], states: list[object]
) -> None:
    cells = rows(sections[name])
    expected = {
        (str(state), protocol_tables._cell(protocol_tables.event_name(event)), str(nxt))
        for (state, event), nxt in table.items()  # type: ignore[misc]
    }
    assert len(cells) == len(table) and set(cells) == expected
    order = [str(state) for state in states]
    seen = [state for state, _, _ in cells]
    assert seen == sorted(seen, key=order.index), "rows are grouped by state, in order"


def test_the_client_table_shows_the_reachable_states(sections: dict[str, str]) -> None:
    cells = rows(sections["job-client"])
    assert len(cells) == len(CLIENT_TABLE)
    assert "IDLE (awaiting start)" not in sections["job-client"]
    assert "| READY (awaiting start) | *start refused* | READY |" in sections["job-client"]


def test_events_are_named_as_on_the_wire_or_in_words() -> None:
    name = protocol_tables.event_name
    assert name(FileMeta) == "`FILE_META`"
    assert name(Chunk) == "binary chunk"
    assert name(JobStart) == "`JOB_START` or `SHARED_STORAGE_JOB::start`"
    assert name(FileMetaLegacy) == "`FILE_META` (legacy form `{name}:{size}:{gui}`)"
    assert name(Outcome.JOB_FINISHED) == "*job finished*"
    assert name(SenderOp.GIVE_UP) == "*give up*"
    from protocol.events import StoreHas

    assert name(StoreHas) == "*StoreHas*"


@pytest.mark.parametrize(
    ("name", "role", "part"),
    [
        ("decisions-worker-job", Role.WORKER, Part.JOB),
        ("decisions-client-job", Role.CLIENT, Part.JOB),
        ("decisions-receiver", Role.WORKER, Part.RECEIVER),
        ("decisions-sender", Role.WORKER, Part.SENDER),
    ],
)
def test_the_decision_tables_say_what_decision_says(
    sections: dict[str, str], name: str, role: Role, part: Part
) -> None:
    cells = rows(sections[name])
    messages = [m for m in MESSAGE_TYPES if protocol_tables.ROUTES[role][m] is part]
    states = {f"`{state}`": state for state in states_of(role, part)}
    for row in cells:
        state = states[row[0]]
        for message, cell in zip(messages, row[1:], strict=True):
            allowed, result = decision(role, message, state)
            assert cell == (result if allowed else f"✗ `{result}`")
    assert len(cells) == (18 if (role, part) == (Role.CLIENT, Part.JOB) else len(states))


def test_the_routes_table_has_every_message_for_both_roles(sections: dict[str, str]) -> None:
    cells = rows(sections["routes"])
    assert len(cells) == len(MESSAGE_TYPES) == 34
    assert ("`JOB_LOG`", "refused `UNEXPECTED_MESSAGE`", "job session") in cells
    assert ("`SHARED_INPUT_PATH`", "job session; `NO_SHARED_STORAGE` if no shared storage",
            "refused `UNEXPECTED_MESSAGE`") in cells  # fmt: skip


def test_the_diagrams_draw_every_state_and_every_move(sections: dict[str, str]) -> None:
    diagram = sections["job-worker-diagram"]
    assert diagram.startswith("```mermaid\nstateDiagram-v2\n    [*] --> IDLE")
    for state in JobState:
        assert f'state "{state}" as {state}' in diagram
    moves = {(s, n) for (s, _), n in WORKER_TABLE.items() if s != n}
    edges = re.findall(r"^    (\w+) --> (\w+): ", diagram, re.M)
    assert {(JobState(a), JobState(b)) for a, b in edges if a != "[*]"} == moves
    assert "READY__awaiting_start" in sections["job-client-diagram"]


def test_the_limits_table_documents_every_bound(sections: dict[str, str]) -> None:
    table = sections["limits"]
    for field in Limits.__dataclass_fields__:
        assert f"`Limits.{field}`" in table
    assert "| data channel | `Limits.max_text_frame_bytes` | 65536 bytes (64 KiB) |" in table
    assert "| `Limits.progress_interval_s` | 0.5 s |" in table
    assert "| `Limits.max_fields` | 1024 fields |" in table


def test_byte_sizes_are_written_in_the_largest_exact_unit() -> None:
    size = protocol_tables._bytes
    assert size(65536) == "65536 bytes (64 KiB)"
    assert size(2 * 1024 * 1024) == "2097152 bytes (2 MiB)"
    assert size(10 * 1024**3) == "10737418240 bytes (10 GiB)"
    assert size(1000) == "1000 bytes"


def test_cells_are_one_line_with_pipes_escaped() -> None:
    assert protocol_tables._cell("a |\n b") == "a \\| b"
    assert protocol_tables._md(":class:`~protocol.x.Y` and ``z``") == "`protocol.x.Y` and `z`"


# ===================================================================== descriptions


def test_descriptions_are_the_comments_of_the_source() -> None:
    comments = protocol_tables.member_comments(ErrorCode)
    assert (
        comments["WORKER_BUSY"]
        == "Another job is running on this worker (possibly for another client)."
    )
    assert protocol_tables.member_comments(PathReason)["OUTSIDE_ROOT"].endswith(
        "so this is the answer whether or not the target exists."
    )  # a comment of several lines is one
    for enum in STATE_ENUMS + ERROR_ENUMS + (PathReason,):
        assert set(protocol_tables.member_comments(enum)) == {m.name for m in enum}


class Undocumented(StrEnum):
    #: This one says what it means.
    SAID = "SAID"
    UNSAID = "UNSAID"
    # a plain comment is no description
    PLAIN = "PLAIN"


def test_a_member_without_a_comment_is_refused() -> None:
    with pytest.raises(ValueError, match="add a #: comment to Undocumented UNSAID, PLAIN"):
        protocol_tables.member_comments(Undocumented)


# ===================================================================== what the document covers


def test_every_frame_type_is_documented(text: str, sections: dict[str, str]) -> None:
    for frame_type in FRAME_TYPES:
        assert f"| `{frame_type}` |" in sections["frames"]
        assert f"#### `{frame_type}" in text or frame_type == "SHARED_STORAGE_JOB", frame_type
    assert "| binary frame | `Chunk` |" in sections["frames"]
    for cls in MESSAGE_TYPES:  # every message type, by its class
        assert f"| `{cls.__name__}` |" in text, cls.__name__
    assert "SHARED_STORAGE_JOB::start" in text
    assert "FILE_META::{name}:{size}:{gui}" in text


@pytest.mark.parametrize("enum", ERROR_ENUMS, ids=lambda e: e.__name__)
def test_every_error_code_is_documented(text: str, enum: type[Enum]) -> None:
    for member in enum:
        assert f"| `{member.value}` |" in text, (
            f"{enum.__name__}.{member.name} is not in PROTOCOL.md"
        )


def test_every_path_error_reason_is_documented(text: str) -> None:
    for reason in PathReason:
        assert f"| `{reason.value}` |" in text, f"PATH_ERROR reason {reason.value!r}"


@pytest.mark.parametrize("enum", STATE_ENUMS, ids=lambda e: e.__name__)
def test_every_state_and_outcome_is_documented(text: str, enum: type[Enum]) -> None:
    for member in enum:
        assert f"| `{member.name}` |" in text, (
            f"{enum.__name__}.{member.name} is not in PROTOCOL.md"
        )


def test_the_fuzzing_section_names_the_tools_that_exist(text: str) -> None:
    section = text.split("## 7. Fuzzing your client", 1)[1]
    for name in (
        "protocol.testing",
        "@given",
        "ConnectionPair",
        ".[fuzz]",
        "scripts/fuzz_worker.py --frames N --seed S",
        "scripts/fuzz_atheris.py",
    ):
        assert name in section, name
    named = set(re.findall(r"`([a-z_0-9]+)\(\)`", section))
    assert len(named) >= 10
    for name in sorted(named):
        assert callable(getattr(protocol.testing, name, None)), f"protocol.testing.{name}"
    for script in ("fuzz_worker.py", "fuzz_atheris.py"):
        assert (REPO / "scripts" / script).is_file(), f"scripts/{script} is documented"


# ===================================================================== worked examples

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
    assert seen == FRAME_TYPES, f"no worked example shows {sorted(FRAME_TYPES - seen)}"


def test_binary_example_ranges_add_up(text: str) -> None:
    for _, lines in fenced_blocks(text, "frames"):
        for line in lines:
            found = re.search(r"\(binary: ([0-9]+) bytes, ([0-9]+)-([0-9]+)\)", line)
            if found:
                size, first, last = map(int, found.groups())
                assert last - first + 1 == size, line


_BINARY_SIZE = re.compile(r"\(binary: ([0-9]+) bytes")


def worked_exchanges(text: str) -> list[tuple[int, list[list[tuple[str, str | bytes]]]]]:
    """Section 6's frame blocks as exchanges (a block that a "# second connection"
    comment splits is two), binary lines as zero bytes of their size."""
    head, _, rest = text.partition("## 6. Worked exchanges")
    section, first_line = rest.split("## 7.", 1)[0], head.count("\n")
    found = []
    for start, lines in fenced_blocks(section, "frames"):
        start += first_line
        parts: list[list[tuple[str, str | bytes]]] = [[]]
        for line in lines:
            if line.startswith("# second connection"):
                parts.append([])
            match = _FRAME_LINE.fullmatch(line)
            if match is None:
                continue
            size = _BINARY_SIZE.match(match["frame"])
            frame = bytes(int(size[1])) if size else match["frame"]
            parts[-1].append((C2W if match["dir"] in ("->", "!>") else W2C, frame))
        found.append((start, parts))
    return found


def worked_replay(exchange: list[tuple[str, str | bytes]]) -> Replay:
    """A replay of one worked exchange, with the world it assumes: the worker's
    capabilities and a busy worker as its frames say, and the jobs whose results it
    sends as run earlier by this client."""
    frames = [frame for _, frame in exchange if isinstance(frame, str)]
    caps = Capabilities(
        shared_storage=not any("NO_SHARED_STORAGE" in f for f in frames),
        results_service=not any("NO_STORAGE" in f for f in frames),
    )
    run = Replay(exchange, capabilities=caps, known_binary=False, step=0.01)  # loopback
    for (_, frame), (_, answer) in itertools.pairwise(exchange):
        if str(frame).startswith("RESULTS_REQUEST::") and str(answer).startswith("FILE_META::"):
            request = decode(frame)
            assert isinstance(request, ResultsRequest)
            run.jobs[request.job_id] = f".rtc-jobs/{request.job_id}/output"
    for direction, frame in exchange:
        busy = decode(frame) if direction == W2C else None
        if isinstance(busy, ProtocolErrorFrame) and busy.code == ErrorCode.WORKER_BUSY:
            run.conn.report(ev.WorkerBusy(busy.detail))
    return run


def test_the_worked_exchanges_are_what_a_worker_connection_says(text: str) -> None:
    """Every worked exchange of section 6, the client's frames fed to a worker
    Connection whose actions have the outcomes the worker's frames show: the worker
    sends exactly the frames shown (the details of its refusals included)."""
    blocks = worked_exchanges(text)
    assert len(blocks) >= 12
    for start, parts in blocks:
        kept: dict[str, bytes] = {}
        for exchange in parts:
            run = worked_replay(exchange)
            run.partials = kept  # the same worker's store, on a new connection
            try:
                run.run()
            except AssertionError as exc:
                raise AssertionError(f"PROTOCOL.md, block at line {start}: {exc}") from None
            run.conn.close()  # the connection drops: its partial stays for a resume
            run.settle()
    assert sum(len(parts) for _, parts in blocks) == len(blocks) + 1  # 6.3's two connections


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
                seen.add(parse_client_frame(frame).type)
                continue
            parsed = parse_server_frame(frame)
            seen.add(parsed.type)
            assert dump_frame(parsed) == frame, f"{where}: not what the server writes"
            if peer in pending:
                assert isinstance(parsed, ErrorFrame), f"{where}: the refusal is answered"
                assert parsed.code == pending.pop(peer), where
        assert not pending, f"block at line {start}: a refused frame has no answer"
    assert {"challenge", "register", "registered", "list_peers", "peers", "offer", "answer",
            "candidate", "error"} <= seen  # fmt: skip


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


# ===================================================================== splicing


def test_splice_replaces_bodies_and_keeps_the_rest() -> None:
    doc = (
        "intro `<!-- BEGIN GENERATED: quoted -->` stays\n"
        "<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\n"
        "middle\n"
        "<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\nend\n"
    )
    out = doc_sections.splice_generated(doc, {"a": "new A", "b": "| x |\n"})
    assert out == (
        "intro `<!-- BEGIN GENERATED: quoted -->` stays\n"
        "<!-- BEGIN GENERATED: a -->\nnew A\n<!-- END GENERATED: a -->\n"
        "middle\n"
        "<!-- BEGIN GENERATED: b -->\n| x |\n<!-- END GENERATED: b -->\nend\n"
    )
    assert doc_sections.splice_generated(out, {"a": "new A", "b": "| x |"}) == out
    assert doc_sections.generated_section_names(doc) == ["a", "b"]


_A = "<!-- BEGIN GENERATED: a -->\n<!-- END GENERATED: a -->\n"
_B = "<!-- BEGIN GENERATED: b -->\n<!-- END GENERATED: b -->\n"


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (_A, "missing sections: b"),
        (
            _A + _B + "<!-- BEGIN GENERATED: c -->\n<!-- END GENERATED: c -->\n",
            "unknown sections: c",
        ),
        (_A + _A + _B, "held twice: a"),
        (_A + "<!-- BEGIN GENERATED: b -->\nno end\n", "unpaired"),
    ],
)
def test_splice_refuses_mismatched_markers(doc: str, problem: str) -> None:
    with pytest.raises(doc_sections.UnknownSectionError, match=problem):
        doc_sections.splice_generated(doc, {"a": "A", "b": "B"})


def test_update_file_rewrites_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "doc.md"
    path.write_text("x\n" + _A + "y\n")
    assert doc_sections.update_file(path, {"a": "new"}, check=True, command="regen") == 1
    assert "regen" in capsys.readouterr().err and "new" not in path.read_text()
    assert doc_sections.update_file(path, {"a": "new"}, check=False, command="regen") == 0
    assert "rewrote" in capsys.readouterr().out
    assert path.read_text() == "x\n<!-- BEGIN GENERATED: a -->\nnew\n<!-- END GENERATED: a -->\ny\n"
    assert doc_sections.update_file(path, {"a": "new"}, check=True, command="regen") == 0
    assert doc_sections.update_file(path, {"b": "B"}, check=True, command="regen") == 2
