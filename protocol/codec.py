"""The wire form of data-channel messages: :func:`encode` and :func:`decode` (sans-IO).

:func:`decode` takes one frame (``str`` for text, ``bytes`` for binary) and returns one
message, or raises :class:`~protocol.errors.RemoteProtocolError` with the code of the
reply, in time linear in the frame's length; nothing else escapes it, for any input
(the fuzz invariant). :func:`encode` is its inverse.

Source: PROTOCOL.md sections 1.3 (grammar) and 2 (frames); h11 bounds every incomplete
event the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from protocol import auth_messages as a
from protocol import messages as m
from protocol import relay_messages as r
from protocol import transfer_messages as t
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.identity import (
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    b64decode,
    b64encode,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import SEP, SHA256_PATTERN

__all__ = ["FRAME_TYPES", "MESSAGE_TYPES", "decode", "encode"]

_COUNT_PATTERN = re.compile(r"[0-9]{1,15}")
_COUNT18_PATTERN = re.compile(r"[0-9]{1,18}")
_MB_PATTERN = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,6})?")
_LEGACY_META = re.compile(r"(?P<name>.+):(?P<size>[0-9]{1,18}):(?P<gui>[^:]*)", re.DOTALL)
_PROOF_RANGES = re.compile(r"[0-9]{1,18}\+[0-9]{1,6}(?:,[0-9]{1,18}\+[0-9]{1,6}){0,15}")


def encode(message: m.Message) -> str | bytes:
    """Serialize a message to its frame: ``str`` for text frames, ``bytes`` for chunks.

    Raises:
        LocalProtocolError: ``message`` is not a protocol message.
    """
    match message:
        case t.Chunk(data=data):
            return data
        case m.JobId(job_id=job_id):
            return f"JOB_ID{SEP}{job_id}"
        case m.SharedInputPath(path=path) | m.SharedOutputPath(path=path):
            return f"{message.TYPE}{SEP}{path}"
        case m.JobStart(legacy=legacy):
            return m.JobStart.LEGACY_FRAME if legacy else m.JobStart.TYPE
        case m.JobCancel():
            return m.JobCancel.TYPE
        case m.PathValidated(which=which):
            return f"PATH_VALIDATED{SEP}{which}"
        case m.PathError(reason=reason):
            return f"PATH_ERROR{SEP}{reason}"
        case m.JobLog(line=line):
            return f"JOB_LOG{SEP}{line}"
        case m.JobMetrics():
            body = json.dumps(message.wire_dict(), separators=(",", ":"))
            return f"JOB_METRICS{SEP}{body}"
        case m.JobComplete(job_id=job_id, output_path=out, file_count=count, total_mb=mb):
            return SEP.join(("JOB_COMPLETE", job_id, out, str(count), f"{mb:.2f}"))
        case m.JobFailed(job_id=job_id, reason=reason):
            return f"JOB_FAILED{SEP}{job_id}{SEP}{reason}"
        case m.ProtocolErrorFrame(code=code, detail=detail):
            return f"PROTOCOL_ERROR{SEP}{code}{SEP}{detail}"
        case t.FileMeta(name=name, size=size, sha256=sha, chunk_size=chunk):
            return SEP.join(("FILE_META", name, str(size), sha, str(chunk)))
        case t.FileMetaLegacy(name=name, size=size, gui=gui):
            return f"FILE_META{SEP}{name}:{size}:{gui}"
        case t.FileReady(offset=offset):
            return f"FILE_READY{SEP}{offset}"
        case t.FileExists(sha256=sha) | t.FileReceived(sha256=sha) | t.FileProof(sha256=sha):
            return f"{message.TYPE}{SEP}{sha}"
        case t.FileProofRequest(nonce=nonce, ranges=ranges):
            shown = ",".join(f"{offset}+{length}" for offset, length in ranges)
            return f"FILE_PROOF_REQUEST{SEP}{nonce}{SEP}{shown}"
        case t.EndOfFile() | t.FileCancel():
            return message.TYPE
        case t.FileProgress(received=received, size=size):
            return f"FILE_PROGRESS{SEP}{received}{SEP}{size}"
        case t.TransferError(code=code, detail=detail):
            return f"TRANSFER_ERROR{SEP}{code}{SEP}{detail}"
        case m.ResultsRequest(job_id=job_id):
            return f"RESULTS_REQUEST{SEP}{job_id}"
        case m.ResultsViaStorage():
            return m.ResultsViaStorage.TYPE
        case m.ResultsStored(job_id=job_id, download_path=path, sha256=None):
            return f"RESULTS_STORED{SEP}{job_id}{SEP}{path}"
        case m.ResultsStored(job_id=job_id, download_path=path, sha256=sha, size=size, token=tok):
            return SEP.join(("RESULTS_STORED", job_id, path, str(sha), str(size), str(tok)))
        case a.AuthHello(public_key=key, nonce=nonce):
            return SEP.join(("AUTH_HELLO", b64encode(key), b64encode(nonce)))
        case a.AuthChallenge(public_key=key, nonce=nonce, signature=sig):
            return SEP.join(("AUTH_CHALLENGE", b64encode(key), b64encode(nonce), b64encode(sig)))
        case a.AuthResponse(signature=sig):
            return f"AUTH_RESPONSE{SEP}{b64encode(sig)}"
        case a.AuthOk(fingerprint=fp):
            return f"AUTH_OK{SEP}{fp}"
        case r.RelayPart() | r.RelayStop() | r.RelayEnded():
            return r.encode_relay(message)
    raise LocalProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"cannot encode {type(message).__name__}")


_Parser = Callable[[str | None, Limits], m.Message]


def _no_fields(cls: type[m.Message]) -> _Parser:
    def parse(rest: str | None, limits: Limits) -> m.Message:
        if rest is not None:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{cls.TYPE} takes no fields")
        return cls()

    return parse


def _need(rest: str | None, type_: str) -> str:
    if rest is None:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{type_} needs fields")
    return rest


def _path(cls: type[m.SharedInputPath | m.SharedOutputPath]) -> _Parser:
    def parse(rest: str | None, limits: Limits) -> m.Message:
        path = _need(rest, cls.TYPE)
        if len(path.encode("utf-8", "surrogatepass")) > limits.max_path_bytes:
            raise RemoteProtocolError(
                ErrorCode.PATH_TOO_LONG, f"path longer than {limits.max_path_bytes} bytes"
            )
        return cls(path)

    return parse


def _parse_shared_storage_job(rest: str | None, limits: Limits) -> m.Message:
    if rest != "start":
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "SHARED_STORAGE_JOB takes 'start'")
    return m.JobStart(legacy=True)


def _parse_path_validated(rest: str | None, limits: Limits) -> m.Message:
    which = _need(rest, m.PathValidated.TYPE)
    if which == "input":
        return m.PathValidated("input")
    if which == "output":
        return m.PathValidated("output")
    raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "PATH_VALIDATED takes input or output")


def _parse_metrics(rest: str | None, limits: Limits) -> m.Message:
    try:
        data = json.loads(_need(rest, m.JobMetrics.TYPE))
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_METRICS is not JSON") from exc
    if not isinstance(data, dict) or any(name not in data for name in m.JobMetrics.FIELDS):
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, f"JOB_METRICS needs {', '.join(m.JobMetrics.FIELDS)}"
        )
    names = m.JobMetrics.FIELDS + tuple(n for n in m.JobMetrics.OPTIONAL if n in data)
    return m.JobMetrics(**{name: data[name] for name in names})


def _parse_complete(rest: str | None, limits: Limits) -> m.Message:
    job_id, sep, tail = _need(rest, m.JobComplete.TYPE).partition(SEP)
    parts = tail.rsplit(SEP, 2)
    if not sep or len(parts) != 3:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_COMPLETE needs 4 fields")
    out, count, mb = parts
    if not _COUNT_PATTERN.fullmatch(count) or not _MB_PATTERN.fullmatch(mb):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "bad file_count or total_mb")
    return m.JobComplete(job_id, out, int(count), float(mb))


def _parse_failed(rest: str | None, limits: Limits) -> m.Message:
    job_id, sep, reason = _need(rest, m.JobFailed.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "JOB_FAILED needs job_id and reason")
    return m.JobFailed(job_id, reason)


def _parse_results_stored(rest: str | None, limits: Limits) -> m.Message:
    job_id, sep, tail = _need(rest, m.ResultsStored.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, "RESULTS_STORED needs job_id and download_path"
        )
    parts = tail.rsplit(SEP, 3)
    if (
        len(parts) == 4
        and parts[0]
        and SHA256_PATTERN.fullmatch(parts[1])
        and _COUNT18_PATTERN.fullmatch(parts[2])
        and m.TOKEN_PATTERN.fullmatch(parts[3])
    ):
        path, sha, size, token = parts
        return m.ResultsStored(job_id, path, sha, int(size), token)
    return m.ResultsStored(job_id, tail)


def _parse_protocol_error(rest: str | None, limits: Limits) -> m.Message:
    code, _, detail = _need(rest, m.ProtocolErrorFrame.TYPE).partition(SEP)
    return m.ProtocolErrorFrame(code, detail)


def _count(text: str, name: str) -> int:
    if not _COUNT18_PATTERN.fullmatch(text):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{name} must be decimal digits")
    return int(text)


def _parse_file_meta(rest: str | None, limits: Limits) -> m.Message:
    body = _need(rest, t.FileMeta.TYPE)
    parts = body.rsplit(SEP, 3)
    if (
        len(parts) == 4
        and _COUNT18_PATTERN.fullmatch(parts[1])
        and SHA256_PATTERN.fullmatch(parts[2])
        and _COUNT18_PATTERN.fullmatch(parts[3])
    ):
        name, size, sha, chunk = parts
        return t.FileMeta(name, int(size), sha, int(chunk))
    legacy = _LEGACY_META.fullmatch(body)
    if legacy is None:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME,
            "FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})",
        )
    return t.FileMetaLegacy(legacy["name"], int(legacy["size"]), legacy["gui"])


def _parse_progress(rest: str | None, limits: Limits) -> m.Message:
    received, sep, size = _need(rest, t.FileProgress.TYPE).partition(SEP)
    if not sep:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "FILE_PROGRESS needs 2 fields")
    return t.FileProgress(_count(received, "bytes_received"), _count(size, "size"))


def _parse_proof_request(rest: str | None, limits: Limits) -> m.Message:
    nonce, sep, ranges = _need(rest, t.FileProofRequest.TYPE).partition(SEP)
    if not sep or not _PROOF_RANGES.fullmatch(ranges):
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME,
            "FILE_PROOF_REQUEST is {nonce}::{offset}+{length}[,{offset}+{length}...]",
        )
    pairs = tuple(tuple(int(n) for n in item.split("+")) for item in ranges.split(","))
    return t.FileProofRequest(nonce, pairs)  # type: ignore[arg-type]


def _parse_transfer_error(rest: str | None, limits: Limits) -> m.Message:
    code, _, detail = _need(rest, t.TransferError.TYPE).partition(SEP)
    return t.TransferError(code, detail)


def _b64_fields(rest: str | None, type_: str, sizes: tuple[int, ...]) -> list[bytes]:
    fields = _need(rest, type_).split(SEP)
    if len(fields) != len(sizes):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{type_} needs {len(sizes)} fields")
    try:
        return [b64decode(text, size) for text, size in zip(fields, sizes, strict=True)]
    except ValueError as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{type_}: {exc}") from None


def _parse_hello(rest: str | None, limits: Limits) -> m.Message:
    key, nonce = _b64_fields(rest, a.AuthHello.TYPE, (PUBLIC_KEY_BYTES, NONCE_BYTES))
    return a.AuthHello(key, nonce)


def _parse_challenge(rest: str | None, limits: Limits) -> m.Message:
    sizes = (PUBLIC_KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES)
    key, nonce, signature = _b64_fields(rest, a.AuthChallenge.TYPE, sizes)
    return a.AuthChallenge(key, nonce, signature)


def _parse_response(rest: str | None, limits: Limits) -> m.Message:
    (signature,) = _b64_fields(rest, a.AuthResponse.TYPE, (SIGNATURE_BYTES,))
    return a.AuthResponse(signature)


_PARSERS: dict[str, _Parser] = {
    m.JobId.TYPE: lambda rest, limits: m.JobId(_need(rest, m.JobId.TYPE)),
    m.SharedInputPath.TYPE: _path(m.SharedInputPath),
    m.SharedOutputPath.TYPE: _path(m.SharedOutputPath),
    m.JobStart.TYPE: _no_fields(m.JobStart),
    "SHARED_STORAGE_JOB": _parse_shared_storage_job,
    m.JobCancel.TYPE: _no_fields(m.JobCancel),
    m.PathValidated.TYPE: _parse_path_validated,
    m.PathError.TYPE: lambda rest, limits: m.PathError(_need(rest, m.PathError.TYPE)),
    m.JobLog.TYPE: lambda rest, limits: m.JobLog(_need(rest, m.JobLog.TYPE)),
    m.JobMetrics.TYPE: _parse_metrics,
    m.JobComplete.TYPE: _parse_complete,
    m.JobFailed.TYPE: _parse_failed,
    m.ProtocolErrorFrame.TYPE: _parse_protocol_error,
    t.FileMeta.TYPE: _parse_file_meta,
    t.FileReady.TYPE: lambda rest, limits: t.FileReady(_count(_need(rest, "FILE_READY"), "offset")),
    t.FileExists.TYPE: lambda rest, limits: t.FileExists(_need(rest, t.FileExists.TYPE)),
    t.FileProofRequest.TYPE: _parse_proof_request,
    t.FileProof.TYPE: lambda rest, limits: t.FileProof(_need(rest, t.FileProof.TYPE)),
    t.EndOfFile.TYPE: _no_fields(t.EndOfFile),
    t.FileProgress.TYPE: _parse_progress,
    t.FileReceived.TYPE: lambda rest, limits: t.FileReceived(_need(rest, t.FileReceived.TYPE)),
    t.TransferError.TYPE: _parse_transfer_error,
    t.FileCancel.TYPE: _no_fields(t.FileCancel),
    m.ResultsRequest.TYPE: lambda rest, limits: m.ResultsRequest(
        _need(rest, m.ResultsRequest.TYPE)
    ),
    m.ResultsViaStorage.TYPE: _no_fields(m.ResultsViaStorage),
    m.ResultsStored.TYPE: _parse_results_stored,
    a.AuthHello.TYPE: _parse_hello,
    a.AuthChallenge.TYPE: _parse_challenge,
    a.AuthResponse.TYPE: _parse_response,
    a.AuthOk.TYPE: lambda rest, limits: a.AuthOk(_need(rest, a.AuthOk.TYPE)),
    **r.RELAY_PARSERS,
}

#: Every text frame type :func:`decode` understands.
FRAME_TYPES: frozenset[str] = frozenset(_PARSERS)


def decode(frame: str | bytes, limits: Limits = DEFAULT_LIMITS) -> m.Message:
    """Parse one data-channel frame into a message.

    Args:
        frame: a text frame (``str``) or a binary frame (``bytes``).
        limits: the bounds to enforce.

    Returns:
        The message; a binary frame becomes :class:`t.Chunk`.

    Raises:
        RemoteProtocolError: the frame is too large (FRAME_TOO_LARGE), has an unknown
            type (UNKNOWN_MESSAGE), breaks its grammar (MALFORMED_FRAME,
            INVALID_JOB_ID) or has an over-long path (PATH_TOO_LONG). Nothing else is
            raised, for any input, in time linear in the input's length.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        data = bytes(frame)
        if len(data) > limits.max_binary_frame_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"binary frame of {len(data)} bytes exceeds {limits.max_binary_frame_bytes}",
            )
        return t.Chunk(data)
    if not isinstance(frame, str):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "a frame is text or bytes")
    # A character is at most 4 bytes of UTF-8: only measure exactly when it may matter.
    if len(frame) * 4 > limits.max_text_frame_bytes:
        size = len(frame.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_frame_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"text frame of {size} bytes exceeds {limits.max_text_frame_bytes}",
            )
    fields = frame.count(SEP) + 1
    if fields > limits.max_fields:
        raise RemoteProtocolError(
            ErrorCode.TOO_MANY_FIELDS, f"{fields} fields exceed {limits.max_fields}"
        )
    type_, sep, rest = frame.partition(SEP)
    parser = _PARSERS.get(type_)
    if parser is None:
        shown = type_[:32].encode("ascii", "backslashreplace").decode("ascii")
        raise RemoteProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {shown!r}")
    try:
        return parser(rest if sep else None, limits)
    except LocalProtocolError as exc:
        raise exc.as_remote() from None


#: Every message class, in the order of PROTOCOL.md section 2 (34 types).
MESSAGE_TYPES: tuple[type[m.Message], ...] = (
    m.JobId,
    m.SharedInputPath,
    m.SharedOutputPath,
    m.JobStart,
    m.JobCancel,
    m.ResultsRequest,
    m.ResultsViaStorage,
    m.PathValidated,
    m.PathError,
    m.JobLog,
    m.JobMetrics,
    m.JobComplete,
    m.JobFailed,
    m.ResultsStored,
    m.ProtocolErrorFrame,
    t.FileMeta,
    t.FileMetaLegacy,
    t.FileProofRequest,
    t.FileProof,
    t.FileReady,
    t.FileExists,
    t.Chunk,
    t.FileProgress,
    t.EndOfFile,
    t.FileReceived,
    t.TransferError,
    t.FileCancel,
    *r.RELAY_TYPES,
    *a.AUTH_TYPES,
)
