"""Markdown rendered from the protocol's own tables (sans-IO).

PROTOCOL.md holds sections between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` markers. Their content is produced here, from the
transition tables of :mod:`protocol.job` and :mod:`protocol.transfer`, the error
code enums, the frame classes and the limits, so the specification cannot drift
from the code: ``scripts/gen_protocol_docs.py`` rewrites the sections and
``tests/test_protocol_docs.py`` fails when they are out of date.

Everything here is a pure function of the imported tables: no file, socket or
event loop is touched. The few things the code cannot tell at run time (the
``#:`` comments above enum members, the readable name of an internal event) are
kept in dicts next to their renderer; the tests check that every enum member and
every table event has an entry, and that each entry matches the comment in the
source.

Source: h11 generates its state diagrams from ``_state.py``'s table; the same idea
in markdown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import TypeVar

from protocol import messages
from protocol.codec import FRAME_TYPES
from protocol.errors import ErrorCode, TransferErrorCode
from protocol.job import CLIENT_EVENTS, INTERNAL_EVENTS, TRANSITIONS, JobState
from protocol.limits import DEFAULT_LIMITS
from protocol.messages import (
    JOB_ID_PATTERN,
    Chunk,
    FileMetaLegacy,
    JobStart,
    Message,
)
from protocol.signaling import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_METADATA_BYTES,
    PEER_ID_PATTERN,
)
from protocol.signaling import ErrorCode as SignalingErrorCode
from protocol.transfer import (
    DEFAULT_CHUNK_SIZE,
    PROGRESS_INTERVAL_S,
    RECEIVER_INTERNAL_EVENTS,
    RECEIVER_PEER_EVENTS,
    RECEIVER_TRANSITIONS,
    SENDER_LOCAL_EVENTS,
    SENDER_PEER_EVENTS,
    SENDER_TRANSITIONS,
    ReceiverState,
    SenderState,
)

__all__ = [
    "ERROR_CODE_DESCRIPTIONS",
    "INTERNAL_EVENT_NAMES",
    "STATE_DESCRIPTIONS",
    "UnknownSectionError",
    "error_codes_table",
    "event_name",
    "frame_classes",
    "frames_table",
    "generated_section_names",
    "job_session_table",
    "limits_table",
    "receiver_table",
    "render_generated_sections",
    "sender_table",
    "splice_generated",
    "states_table",
    "transition_table",
]

# ------------------------------------------------------------------ descriptions

#: A readable name for each event the adapters report (not sent on the wire).
INTERNAL_EVENT_NAMES: dict[str, str] = {
    # protocol.job
    "InputAccepted": "input validated",
    "FileAccepted": "file received or already held",
    "InputRejected": "input refused",
    "OutputAccepted": "output validated and created",
    "OutputRejected": "output refused",
    "JobFinished": "job finished",
    # protocol.transfer (receiver)
    "StoreHas": "store holds the content",
    "StoreOffset": "partial file opened at an offset",
    "Stored": "verified and stored",
    "StoreFailed": "store refused or failed",
}

#: One line per state, as the ``#:`` comment above the member says (``x`` in
#: backquotes instead of reST's double backquotes).
STATE_DESCRIPTIONS: dict[type[Enum], dict[str, str]] = {
    JobState: {
        "IDLE": "No path validated yet (the job_id may be set).",
        "HAVE_INPUT": "The input path is validated; the output path is not.",
        "HAVE_FILE": (
            "A file received over the channel is the input; JOB_START is allowed (the "
            "outputs then stay in the worker's job folder)."
        ),
        "HAVE_OUTPUT": "The output folder is validated and created; the input path is not.",
        "READY": "Input (a path or a received file) and output are set: JOB_START is allowed.",
        "RUNNING": "A job runs; only JOB_CANCEL is allowed until it finishes.",
    },
    ReceiverState: {
        "IDLE": "No transfer open.",
        "CHECKING": "FILE_META accepted; the store is being asked what it holds.",
        "RECEIVING": "FILE_READY sent (or a legacy transfer opened): chunks are appended.",
        "VERIFYING": "Every byte arrived: the sha256 is being verified.",
        "DRAINING": (
            "The transfer was aborted; its remaining chunks are dropped without replies "
            "until END_OF_FILE, FILE_CANCEL or the next FILE_META."
        ),
    },
    SenderState: {
        "IDLE": "No transfer open.",
        "AWAIT_READY": "FILE_META sent; waiting for FILE_READY or FILE_EXISTS.",
        "SENDING": "Streaming chunks from the receiver's offset.",
        "AWAIT_RECEIVED": "END_OF_FILE sent; waiting for FILE_RECEIVED.",
        "CANCELLED": (
            "We sent FILE_CANCEL: the receiver's frames about that transfer that were "
            "already on their way are absorbed until it acknowledges with TRANSFER_ERROR."
        ),
    },
}

#: One line per error code, as the comment or docstring of the member says.
ERROR_CODE_DESCRIPTIONS: dict[type[Enum], dict[str, str]] = {
    ErrorCode: {
        "UNKNOWN_MESSAGE": (
            "The frame's type (the text before the first `::`) is not a known message."
        ),
        "MALFORMED_FRAME": "The frame has a known type but its fields do not follow the grammar.",
        "FRAME_TOO_LARGE": "The frame is longer than the configured bound (bytes of UTF-8 text).",
        "PATH_TOO_LONG": "A path field is longer than the configured bound (bytes of UTF-8).",
        "TOO_MANY_FIELDS": "The frame has more `::`-separated fields than the configured bound.",
        "INVALID_JOB_ID": "A job_id does not match `[A-Za-z0-9._-]{1,64}`.",
        "UNEXPECTED_MESSAGE": (
            "The message is valid but not allowed in the session's current state."
        ),
        "UNEXPECTED_DATA": "A binary frame arrived where no file transfer is open.",
        "WORKER_BUSY": "Another job is running on this worker (possibly for another client).",
        "NO_SHARED_STORAGE": (
            "A shared-storage path was sent to a worker that has no shared storage."
        ),
        "OVERLOADED": "The receiver could not keep up (its inbound queue is full).",
        "UNKNOWN_JOB": "RESULTS_REQUEST names a job this worker has no results for.",
        "NO_STORAGE": (
            "RESULTS_VIA_STORAGE was sent to a worker without a storage service configured."
        ),
        "INTERNAL_ERROR": "The worker failed in a way that is not the peer's fault.",
    },
    TransferErrorCode: {
        "HASH_MISMATCH": "The sha256 of the received bytes differs from the announced one.",
        "SIZE_MISMATCH": "More or fewer bytes than announced arrived before END_OF_FILE.",
        "FILE_TOO_LARGE": "The announced size is above the receiver's maximum; no byte was sent.",
        "DISK_FULL": "The receiver ran out of disk space; the partial data is kept for a resume.",
        "INVALID_NAME": (
            "The name is not a plain base name (directory part, `..`, NUL, control chars)."
        ),
        "CANCELLED": "FILE_CANCEL stopped the transfer; the partial data is kept for a resume.",
        "UNEXPECTED_DATA": (
            "A binary frame arrived outside a transfer, or a chunk broke its bounds."
        ),
    },
    SignalingErrorCode: {
        "INVALID_JSON": "The text frame is not valid JSON.",
        "INVALID_FRAME": (
            "Valid JSON but not an object, a missing field, a wrong type, or a binary frame."
        ),
        "UNKNOWN_TYPE": "The `type` field names no known frame.",
        "FRAME_TOO_LARGE": "The UTF-8 text of the frame exceeds the server's soft limit.",
        "NOT_REGISTERED": "A frame other than `register` arrived before the socket registered.",
        "UNAUTHORIZED": "Wrong or missing token; the server closes the socket after this error.",
        "PEER_ID_TAKEN": "Another live socket is registered under this peer id.",
        "ALREADY_REGISTERED": "This socket is already registered.",
        "PEER_NOT_FOUND": "The `to` of a relayed frame names no registered peer.",
    },
}

#: Which frame carries the codes of each enum.
_ERROR_FRAMES: dict[type[Enum], str] = {
    ErrorCode: "`PROTOCOL_ERROR`",
    TransferErrorCode: "`TRANSFER_ERROR`",
    SignalingErrorCode: 'signaling `{"type":"error"}`',
}

# ------------------------------------------------------------------ markdown helpers


def _cell(text: str) -> str:
    """Make ``text`` safe inside a markdown table cell (one line, pipes escaped)."""
    return " ".join(text.replace("|", "\\|").split())


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def _rst_to_md(text: str) -> str:
    """reST inline literals (double backquotes) to markdown code spans."""
    return text.replace("``", "`")


def _first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return _rst_to_md(doc.split("\n\n", 1)[0].replace("\n", " "))


# ------------------------------------------------------------------ events


def event_name(event: type, *, sent: bool = False) -> str:
    """The name of a table event as documented.

    Wire messages are named by their frame type as it appears on the wire
    (``JOB_START``; a binary frame is ``binary chunk``); internal events by what
    happened, with the class name in parentheses, e.g. ``input validated
    (InputAccepted)``.

    Args:
        event: the event type, a key's second item in a transition table.
        sent: the event is a frame *we* send (the sender's FILE_META and END_OF_FILE).

    Raises:
        ValueError: ``event`` is neither a wire message nor in :data:`INTERNAL_EVENT_NAMES`.
    """
    if isinstance(event, type) and issubclass(event, Message):
        if event is Chunk:
            name = "binary chunk"
        elif event is JobStart:
            name = f"`{JobStart.TYPE}` or `{JobStart.LEGACY_FRAME}`"
        elif event is FileMetaLegacy:
            name = f"`{event.TYPE}` (legacy form `{{name}}:{{size}}:{{gui}}`)"
        elif event.TYPE:
            name = f"`{event.TYPE}`"
        else:  # pragma: no cover - every message class has a TYPE or is Chunk
            raise ValueError(f"{event.__name__} has no frame type")
        return f"{name} (sent)" if sent else name
    readable = INTERNAL_EVENT_NAMES.get(getattr(event, "__name__", ""))
    if readable is None:
        raise ValueError(
            f"no readable name for internal event {event!r}: add it to "
            "protocol.docs.INTERNAL_EVENT_NAMES"
        )
    return f"{readable} (`{event.__name__}`)"


_State = TypeVar("_State", bound=Enum)


def transition_table(
    transitions: Mapping[tuple[_State, type], _State],
    event_order: Sequence[type],
    *,
    sent: Iterable[type] = (),
) -> str:
    """A markdown table ``state | event | next state``, one row per table entry.

    Rows are sorted by the state's position in its enum, then by the event's
    position in ``event_order`` (events missing from it come last, by name).

    Args:
        transitions: ``(state, event type) -> next state``.
        event_order: the canonical order of the machine's events.
        sent: event types that are frames the machine's owner sends.
    """
    sent_types = frozenset(sent)
    positions = {event: index for index, event in enumerate(event_order)}

    def key(item: tuple[tuple[Enum, type], Enum]) -> tuple[int, int, str]:
        (state, event), _ = item
        members = list(type(state))
        return members.index(state), positions.get(event, len(positions)), event.__name__

    rows = [
        (state.name, event_name(event, sent=event in sent_types), nxt.name)
        for (state, event), nxt in sorted(transitions.items(), key=key)
    ]
    return _table(("state", "event", "next state"), rows)


def job_session_table() -> str:
    """The job session's transitions (:data:`protocol.job.TRANSITIONS`)."""
    return transition_table(TRANSITIONS, (*CLIENT_EVENTS, *INTERNAL_EVENTS))


def receiver_table() -> str:
    """The transfer receiver's transitions (:data:`protocol.transfer.RECEIVER_TRANSITIONS`)."""
    return transition_table(
        RECEIVER_TRANSITIONS, (*RECEIVER_PEER_EVENTS, *RECEIVER_INTERNAL_EVENTS)
    )


def sender_table() -> str:
    """The transfer sender's transitions (:data:`protocol.transfer.SENDER_TRANSITIONS`).

    FILE_META and END_OF_FILE are frames the sender sends; they are marked ``(sent)``.
    """
    return transition_table(
        SENDER_TRANSITIONS,
        (*SENDER_LOCAL_EVENTS, *SENDER_PEER_EVENTS),
        sent=SENDER_LOCAL_EVENTS,
    )


def states_table(enum: type[Enum]) -> str:
    """A markdown table ``state | meaning`` for every member of ``enum``, in order.

    Raises:
        ValueError: a member has no entry in :data:`STATE_DESCRIPTIONS`.
    """
    descriptions = STATE_DESCRIPTIONS.get(enum, {})
    missing = [member.name for member in enum if member.name not in descriptions]
    if missing:
        raise ValueError(
            f"describe {enum.__name__} {', '.join(missing)} in protocol.docs.STATE_DESCRIPTIONS"
        )
    return _table(
        ("state", "meaning"),
        ((f"`{member.name}`", descriptions[member.name]) for member in enum),
    )


def error_codes_table(enum: type[Enum] | None = None) -> str:
    """A markdown table of error codes and their one-line meaning.

    Args:
        enum: one of :class:`protocol.errors.ErrorCode`,
            :class:`protocol.messages.TransferErrorCode` or
            :class:`protocol.signaling.ErrorCode` (rows in definition order); None
            renders all three in one table with a column naming the frame.

    Raises:
        ValueError: a member has no entry in :data:`ERROR_CODE_DESCRIPTIONS`.
    """
    enums = (enum,) if enum is not None else tuple(_ERROR_FRAMES)
    rows: list[tuple[str, ...]] = []
    for current in enums:
        descriptions = ERROR_CODE_DESCRIPTIONS.get(current, {})
        missing = [member.name for member in current if member.name not in descriptions]
        if missing:
            raise ValueError(
                f"describe {current.__module__}.{current.__name__} {', '.join(missing)} "
                "in protocol.docs.ERROR_CODE_DESCRIPTIONS"
            )
        for member in current:
            row = (f"`{member.value}`", descriptions[member.name])
            rows.append(row if enum is not None else (_ERROR_FRAMES[current], *row))
    header = ("code", "meaning") if enum is not None else ("carried by", "code", "meaning")
    return _table(header, rows)


# ------------------------------------------------------------------ frames and limits


def _message_classes() -> list[type[Message]]:
    classes = []
    for name in messages.__all__:
        obj = getattr(messages, name)
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message:
            classes.append(obj)
    return classes


def frame_classes() -> dict[str, list[type[Message]]]:
    """Every text frame type of :data:`FRAME_TYPES` with the message classes it decodes to.

    A type that no class declares as its ``TYPE`` is matched through a class's
    ``LEGACY_FRAME`` (``SHARED_STORAGE_JOB`` is the earlier form of JOB_START).

    Raises:
        ValueError: a frame type matches no message class.
    """
    classes = _message_classes()
    result: dict[str, list[type[Message]]] = {}
    for frame_type in sorted(FRAME_TYPES):
        matched = [cls for cls in classes if frame_type == cls.TYPE]
        if not matched:
            matched = [
                cls
                for cls in classes
                if str(getattr(cls, "LEGACY_FRAME", "")).partition(messages.SEP)[0] == frame_type
            ]
        if not matched:
            raise ValueError(f"frame type {frame_type!r} matches no class of protocol.messages")
        result[frame_type] = matched
    return result


def frames_table() -> str:
    """Every frame type (and binary frames) with its class and the first line of its doc."""
    rows: list[tuple[str, str, str]] = []
    for frame_type, classes in frame_classes().items():
        for cls in classes:
            rows.append((f"`{frame_type}`", f"`{cls.__name__}`", _first_doc_line(cls)))
    rows.append(("binary frame", f"`{Chunk.__name__}`", _first_doc_line(Chunk)))
    return _table(("frame type", "class", "summary"), rows)


def _bytes(value: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value} bytes ({value // size} {unit})"
    return f"{value} bytes"


def limits_table() -> str:
    """The protocol's bounds and defaults, from the constants that enforce them."""
    limits = DEFAULT_LIMITS
    rows = [
        (
            "data channel",
            "`Limits.max_text_frame_bytes`",
            _bytes(limits.max_text_frame_bytes),
            "longest text frame, UTF-8 bytes (`PROTOCOL_ERROR::FRAME_TOO_LARGE`)",
        ),
        (
            "data channel",
            "`Limits.max_binary_frame_bytes`",
            _bytes(limits.max_binary_frame_bytes),
            "longest binary frame and largest `chunk_size` accepted",
        ),
        (
            "data channel",
            "`Limits.max_path_bytes`",
            _bytes(limits.max_path_bytes),
            "longest path field, UTF-8 bytes (`PROTOCOL_ERROR::PATH_TOO_LONG`)",
        ),
        (
            "data channel",
            "`Limits.max_fields`",
            f"{limits.max_fields} fields",
            "most `::`-separated fields in a text frame (`PROTOCOL_ERROR::TOO_MANY_FIELDS`)",
        ),
        (
            "data channel",
            "`DEFAULT_CHUNK_SIZE`",
            _bytes(DEFAULT_CHUNK_SIZE),
            "chunk size every peer can be assumed to accept",
        ),
        (
            "data channel",
            "`PROGRESS_INTERVAL_S`",
            f"{PROGRESS_INTERVAL_S:g} s",
            "`FILE_PROGRESS` is sent at most this often",
        ),
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
        (
            "signaling",
            "`PEER_ID_PATTERN`",
            f"`{PEER_ID_PATTERN}`",
            "grammar of a peer id",
        ),
    ]
    return _table(("layer", "constant", "value", "meaning"), rows)


# ------------------------------------------------------------------ sections


def render_generated_sections() -> dict[str, str]:
    """Every generated section of PROTOCOL.md: section name -> markdown (no final newline)."""
    return {
        "limits": limits_table(),
        "frames": frames_table(),
        "protocol-error-codes": error_codes_table(ErrorCode),
        "transfer-error-codes": error_codes_table(TransferErrorCode),
        "signaling-error-codes": error_codes_table(SignalingErrorCode),
        "job-states": states_table(JobState),
        "job-session": job_session_table(),
        "receiver-states": states_table(ReceiverState),
        "receiver": receiver_table(),
        "sender-states": states_table(SenderState),
        "sender": sender_table(),
    }


# Markers count only on a line of their own, so the text may quote them.
_SECTION = re.compile(
    r"^(?P<begin><!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"^(?P<end><!-- END GENERATED: (?P=name) -->)$",
    re.DOTALL | re.MULTILINE,
)
_MARKER = re.compile(r"^<!-- (?:BEGIN|END) GENERATED: .* -->$", re.MULTILINE)


class UnknownSectionError(ValueError):
    """PROTOCOL.md's markers do not match the generated sections."""


def generated_section_names(text: str) -> list[str]:
    """Names of the well-formed generated sections of ``text``, in order."""
    return [match["name"] for match in _SECTION.finditer(text)]


def splice_generated(text: str, sections: Mapping[str, str]) -> str:
    """Replace the body of every generated section of ``text`` with ``sections[name]``.

    A section is a line ``<!-- BEGIN GENERATED: name -->``, the body, and a line
    ``<!-- END GENERATED: name -->``; the body becomes ``sections[name]`` and one
    line break. Markers quoted inside a line are not markers.

    Raises:
        UnknownSectionError: ``text`` has a section not in ``sections``, lacks one of
            them, holds one twice, or has an unpaired marker.
    """
    names = generated_section_names(text)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    unknown = sorted(set(names) - set(sections))
    missing = sorted(set(sections) - set(names))
    paired = 2 * len(names)
    markers = len(_MARKER.findall(text))
    problems = []
    if duplicates:
        problems.append(f"sections held twice: {', '.join(duplicates)}")
    if unknown:
        problems.append(f"unknown sections: {', '.join(unknown)}")
    if missing:
        problems.append(f"missing sections: {', '.join(missing)}")
    if markers != paired:
        problems.append(f"{markers - paired} unpaired or malformed GENERATED marker(s)")
    if problems:
        raise UnknownSectionError("; ".join(problems))

    def replace(match: re.Match[str]) -> str:
        body = sections[match["name"]].rstrip("\n")
        return f"{match['begin']}{body}\n{match['end']}"

    return _SECTION.sub(replace, text)
