"""Markdown for PROTOCOL.md, rendered from the protocol's own tables.

Every generated section of PROTOCOL.md comes from here: the transition tables of
:mod:`protocol.job`, :mod:`protocol.transfer` and :mod:`protocol.sender`, the routes
and decisions of :mod:`protocol.routes`, the error-code enums, the message classes and
:class:`protocol.limits.Limits`. Descriptions are the ``#:`` comments above enum members
and the docstrings, read from the source, so the text cannot drift from the code.

A tool, not part of the runtime packages (``scripts/gen_protocol_docs.py`` writes the
file; ``tests/test_protocol_docs.py`` fails when it is stale).

Source: h11 generates its state diagrams from ``_state.py``'s table; the same idea in
markdown and mermaid.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.codec import FRAME_TYPES, MESSAGE_TYPES, encode
from protocol.errors import ErrorCode, PathReason, RelayEndCode, TransferErrorCode
from protocol.handshake import CLIENT_AUTH_TABLE, WORKER_AUTH_TABLE, AuthState, AuthStep
from protocol.identity import b64encode, fingerprint, transcript
from protocol.job import CLIENT_TABLE, WORKER_TABLE, ClientJobState, JobState, Outcome, Pending
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import JOB_ID_PATTERN, SEP, JobStart, Message
from protocol.routes import GUARDS, ROUTES, Part, Role, decision, states_of
from protocol.sender import SENDER_TABLE, SenderOp, SenderState
from protocol.signaling import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_METADATA_BYTES,
    PEER_ID_PATTERN,
    SignalingErrorCode,
)
from protocol.testing.keys import CLIENT_DTLS, WORKER_DTLS, SeedSigner
from protocol.transfer import RECEIVER_TABLE, ReceiverState
from protocol.transfer_messages import Chunk, FileMetaLegacy

__all__ = ["member_comments", "render_sections"]

_COMMENT_FRAMES: dict[type[Enum], str] = {
    ErrorCode: "`PROTOCOL_ERROR`",
    TransferErrorCode: "`TRANSFER_ERROR`",
    SignalingErrorCode: 'signaling `{"type":"error"}`',
}


def _cell(text: str) -> str:
    """``text`` made safe inside a markdown table cell (one line, pipes escaped)."""
    return " ".join(text.replace("|", "\\|").split())


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def _md(text: str) -> str:
    """reST inline literals (double backquotes) and roles to markdown code spans."""
    text = re.sub(r":(?:class|data|meth|func|attr):`~?([\w.]+)`", r"`\1`", text)
    return text.replace("``", "`")


def member_comments(enum: type[Enum]) -> dict[str, str]:
    """The ``#:`` comment above each member of ``enum``, read from its source.

    Raises:
        ValueError: a member has no comment (every state and code must say what it means).
    """
    lines = inspect.getsource(enum).splitlines()
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Z_][A-Z0-9_]*)\s*=", stripped)
        if match and pending:
            comments[match[1]] = _md(" ".join(pending))
        if not stripped.startswith("#"):
            pending = []
    missing = [member.name for member in enum if member.name not in comments]
    if missing:
        raise ValueError(f"add a #: comment to {enum.__name__} {', '.join(missing)}")
    return comments


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return _md(doc.split("\n\n", 1)[0].replace("\n", " "))


def event_name(event: object) -> str:
    """How a table event is written: a frame type in backquotes, an outcome in words."""
    if isinstance(event, type) and issubclass(event, Message):
        if event is Chunk:
            return "binary chunk"
        if event is JobStart:
            return f"`{JobStart.TYPE}` or `{JobStart.LEGACY_FRAME}`"
        if event is FileMetaLegacy:
            return f"`{event.TYPE}` (legacy form `{{name}}:{{size}}:{{gui}}`)"
        return f"`{event.TYPE}`"
    if isinstance(event, Enum):
        return f"*{event.value}*"
    return f"*{getattr(event, '__name__', event)}*"


def states_table(enum: type[Enum]) -> str:
    """``state | meaning`` for every member of ``enum``, in order."""
    comments = member_comments(enum)
    return _table(("state", "meaning"), ((f"`{m.name}`", comments[m.name]) for m in enum))


def transitions(table: Mapping[tuple[Any, Any], Any], states: Sequence[object]) -> str:
    """``state | event | next state``, one row per entry, in the states' order."""
    order = {state: index for index, state in enumerate(states)}
    rows = sorted(table.items(), key=lambda item: (order[item[0][0]], event_name(item[0][1])))
    return _table(
        ("state", "event", "next state"),
        ((str(state), event_name(event), str(nxt)) for (state, event), nxt in rows),
    )


def _reachable_client_states() -> list[ClientJobState]:
    start = ClientJobState(JobState.IDLE, Pending.NONE)
    seen, todo = [start], [start]
    while todo:
        state = todo.pop()
        for (src, _event), nxt in CLIENT_TABLE.items():
            if src == state and nxt not in seen:
                seen.append(nxt)
                todo.append(nxt)
    return sorted(
        seen, key=lambda s: (list(JobState).index(s.worker), list(Pending).index(s.pending))
    )


def _mermaid_id(state: object) -> str:
    return re.sub(r"\W", "_", str(state)).strip("_")


def diagram(table: Mapping[tuple[Any, Any], Any], states: Sequence[object]) -> str:
    """A mermaid ``stateDiagram-v2`` of ``table`` (self-loops left out)."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {_mermaid_id(states[0])}"]
    for state in states:
        lines.append(f'    state "{state}" as {_mermaid_id(state)}')
    edges: dict[tuple[str, str], list[str]] = {}
    for (src, event), nxt in table.items():
        if src in states and src != nxt:
            label = event_name(event).replace("`", "").replace("*", "")
            edges.setdefault((_mermaid_id(src), _mermaid_id(nxt)), []).append(label)
    for (src_id, dst_id), labels in edges.items():
        lines.append(f"    {src_id} --> {dst_id}: {', '.join(sorted(set(labels)))}")
    lines.append("```")
    return "\n".join(lines)


def routes_table() -> str:
    """``message | a worker receiving it | a client receiving it`` for all 31 types."""
    rows = []
    for message in MESSAGE_TYPES:
        name = event_name(message)
        rows.append((name, *(_route(role, message) for role in Role)))
    return _table(("message", "worker", "client"), rows)


def _route(role: Role, message: type[Message]) -> str:
    part = ROUTES[role][message]
    if part is Part.REFUSED:
        return f"refused `{ErrorCode.UNEXPECTED_MESSAGE}`"
    guard = GUARDS.get(message) if role is Role.WORKER else None
    return part.value if guard is None else f"{part.value}; `{guard[1]}` if {guard[0].value}"


def decisions_table(role: Role, part: Part) -> str:
    """Every (state, message type) of ``part`` in ``role``: the next state, or ✗ and the
    refusal code. States are rows, message types columns."""
    messages = [m for m in MESSAGE_TYPES if ROUTES[role][m] is part]
    states = (
        _reachable_client_states()
        if role is Role.CLIENT and part is Part.JOB
        else states_of(role, part)
    )
    rows = []
    for state in states:
        cells = []
        for message in messages:
            allowed, result = decision(role, message, state)
            cells.append(str(result) if allowed else f"✗ `{result}`")
        rows.append((f"`{state}`", *cells))
    return _table(("state", *(event_name(m) for m in messages)), rows)


def codes_table(enum: type[Enum]) -> str:
    """``code | meaning`` for every member of an error-code enum."""
    comments = member_comments(enum)
    return _table(("code", "meaning"), ((f"`{m.value}`", comments[m.name]) for m in enum))


def path_reasons_table() -> str:
    """``reason | meaning`` of :class:`protocol.errors.PathReason`."""
    comments = member_comments(PathReason)
    return _table(("reason", "when"), ((f"`{m.value}`", comments[m.name]) for m in PathReason))


def frames_table() -> str:
    """Every frame type (and binary frames) with its class and its docstring's summary."""
    rows = []
    for frame_type in sorted(FRAME_TYPES):
        for cls in MESSAGE_TYPES:
            legacy = str(getattr(cls, "LEGACY_FRAME", "")).partition(SEP)[0]
            if frame_type in (cls.TYPE, legacy) and cls.TYPE:
                rows.append((f"`{frame_type}`", f"`{cls.__name__}`", _first_doc_line(cls)))
    rows.append(("binary frame", f"`{Chunk.__name__}`", _first_doc_line(Chunk)))
    return _table(("frame type", "class", "summary"), rows)


def _bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024 * 1024), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value} bytes ({value // size} {unit})"
    return f"{value} bytes"


#: Fields of Limits that count something other than bytes, and what.
_COUNTS = {"max_fields": "fields", "proof_ranges": "ranges", "max_relay_parts": "parts"}


def limits_table() -> str:
    """Every field of :class:`Limits` with its default, and the signaling bounds."""
    doc = inspect.getdoc(Limits) or ""
    meanings = dict(re.findall(r"^\s{4}(\w+):\s*(.+?)(?=\n\s{4}\w+:|\Z)", doc, re.M | re.S))
    rows = []
    for field in dataclasses.fields(Limits):
        value = getattr(DEFAULT_LIMITS, field.name)
        shown = f"{value:g} s" if isinstance(value, float) else _bytes(value)
        if field.name in _COUNTS:
            shown = f"{value} {_COUNTS[field.name]}"
        rows.append(
            ("data channel", f"`Limits.{field.name}`", shown, _md(meanings.get(field.name, "")))
        )
    rows += [
        (
            "data channel",
            "`JOB_ID_PATTERN`",
            f"`{JOB_ID_PATTERN.pattern}`",
            "grammar of a job_id (`INVALID_JOB_ID`)",
        ),
        (
            "signaling",
            "`DEFAULT_MAX_FRAME_BYTES`",
            _bytes(DEFAULT_MAX_FRAME_BYTES),
            "soft limit on one text frame, UTF-8 bytes (`FRAME_TOO_LARGE`)",
        ),
        (
            "signaling",
            "`MAX_METADATA_BYTES`",
            _bytes(MAX_METADATA_BYTES),
            "a `register` frame's `metadata`, as compact JSON",
        ),
        ("signaling", "`PEER_ID_PATTERN`", f"`{PEER_ID_PATTERN}`", "grammar of a peer id"),
    ]
    return _table(("layer", "name", "default", "meaning"), rows)


def handshake_vector() -> str:
    """A worked handshake with fixed keys and nonces: every input, the transcript, both
    signatures and the four frames (Ed25519 signatures are deterministic)."""
    client, worker = SeedSigner.numbered(1), SeedSigner.numbered(2)
    client_nonce, worker_nonce = bytes(range(32)), bytes(range(32, 64))
    signed = transcript(
        offer_dtls=CLIENT_DTLS,
        answer_dtls=WORKER_DTLS,
        client_key=client.public_key,
        worker_key=worker.public_key,
        client_nonce=client_nonce,
        worker_nonce=worker_nonce,
    )
    worker_sig = worker.sign(b"worker" + signed)
    client_sig = client.sign(b"client" + signed)
    frames = [
        AuthHello(client.public_key, client_nonce),
        AuthChallenge(worker.public_key, worker_nonce, worker_sig),
        AuthResponse(client_sig),
        AuthOk(fingerprint(client.public_key)),
    ]
    lines = [
        f"client_seed     = {bytes([1] * 32).hex()}",
        f"client_key      = {client.public_key.hex()}",
        f"client_fp       = {fingerprint(client.public_key)}",
        f"worker_seed     = {bytes([2] * 32).hex()}",
        f"worker_key      = {worker.public_key.hex()}",
        f"worker_fp       = {fingerprint(worker.public_key)}",
        f"offer_dtls      = {CLIENT_DTLS}",
        f"answer_dtls     = {WORKER_DTLS}",
        f"client_nonce    = {client_nonce.hex()}",
        f"worker_nonce    = {worker_nonce.hex()}",
        f"transcript      = {signed.hex()}",
        f"worker_sig_b64  = {b64encode(worker_sig)}",
        f"client_sig_b64  = {b64encode(client_sig)}",
    ]
    shown = [f"{'->' if i % 2 == 0 else '<-'} {encode(frame)!s}" for i, frame in enumerate(frames)]
    return "```text\n" + "\n".join(lines) + "\n```\n\n```frames\n" + "\n".join(shown) + "\n```"


def render_sections() -> dict[str, str]:
    """Every generated section of PROTOCOL.md: section name -> markdown."""
    worker_states = list(JobState)
    client_states = _reachable_client_states()
    sender_table: dict[tuple[Any, Any], Any] = {
        key: nxt for key, nxt in SENDER_TABLE.items() if not isinstance(key[1], SenderOp)
    }
    sender_ops: dict[tuple[Any, Any], Any] = {
        key: nxt for key, nxt in SENDER_TABLE.items() if isinstance(key[1], SenderOp)
    }
    worker_auth_states = [
        s for s in AuthState if s not in (AuthState.HELLO_SENT, AuthState.RESPONDED)
    ]
    client_auth_states = [s for s in AuthState if s is not AuthState.CHALLENGED]
    return {
        "limits": limits_table(),
        "frames": frames_table(),
        "path-error-reasons": path_reasons_table(),
        "protocol-error-codes": codes_table(ErrorCode),
        "transfer-error-codes": codes_table(TransferErrorCode),
        "relay-end-codes": codes_table(RelayEndCode),
        "signaling-error-codes": codes_table(SignalingErrorCode),
        "routes": routes_table(),
        "job-states": states_table(JobState),
        "job-outcomes": states_table(Outcome),
        "job-worker-diagram": diagram(dict(WORKER_TABLE), worker_states),
        "job-worker": transitions(dict(WORKER_TABLE), worker_states),
        "job-client-states": states_table(Pending),
        "job-client-diagram": diagram(dict(CLIENT_TABLE), client_states),
        "job-client": transitions(
            {k: v for k, v in CLIENT_TABLE.items() if k[0] in client_states}, client_states
        ),
        "receiver-states": states_table(ReceiverState),
        "receiver": transitions(dict(RECEIVER_TABLE), list(ReceiverState)),
        "sender-states": states_table(SenderState),
        "sender": transitions({**sender_table, **sender_ops}, list(SenderState)),
        "decisions-worker-job": decisions_table(Role.WORKER, Part.JOB),
        "decisions-client-job": decisions_table(Role.CLIENT, Part.JOB),
        "decisions-receiver": decisions_table(Role.WORKER, Part.RECEIVER),
        "decisions-sender": decisions_table(Role.WORKER, Part.SENDER),
        "auth-states": states_table(AuthState),
        "auth-steps": states_table(AuthStep),
        "auth-worker-diagram": diagram(dict(WORKER_AUTH_TABLE), worker_auth_states),
        "auth-worker": transitions(dict(WORKER_AUTH_TABLE), worker_auth_states),
        "auth-client-diagram": diagram(dict(CLIENT_AUTH_TABLE), client_auth_states),
        "auth-client": transitions(dict(CLIENT_AUTH_TABLE), client_auth_states),
        "handshake-vector": handshake_vector(),
    }
