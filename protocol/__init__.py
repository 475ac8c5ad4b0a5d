"""The job protocol, sans-IO: messages, their codec, the session state machine, errors.

Nothing in this package performs I/O or imports asyncio, aiortc or aiohttp: bytes
and text go in, typed messages and decisions come out.

Public API::

    from protocol import decode, encode, ProtocolError, LocalProtocolError, RemoteProtocolError
    message = decode("SHARED_INPUT_PATH::data/train.zip")   # -> SharedInputPath(path=...)
    frame = encode(PathValidated("input"))                   # -> "PATH_VALIDATED::input"
"""

from protocol.codec import FRAME_TYPES, decode, encode
from protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    PathReason,
    ProtocolError,
    RemoteProtocolError,
    TransferErrorCode,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
    is_valid_job_id,
)
from protocol.transfer_messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    TransferError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_TYPES",
    "Chunk",
    "EndOfFile",
    "ErrorCode",
    "FileCancel",
    "FileExists",
    "FileMeta",
    "FileMetaLegacy",
    "FileProgress",
    "FileReady",
    "FileReceived",
    "JobCancel",
    "JobComplete",
    "JobFailed",
    "JobId",
    "JobLog",
    "JobMetrics",
    "JobStart",
    "Limits",
    "LocalProtocolError",
    "Message",
    "PathError",
    "PathReason",
    "PathValidated",
    "ProtocolError",
    "ProtocolErrorFrame",
    "RemoteProtocolError",
    "ResultsRequest",
    "ResultsStored",
    "ResultsViaStorage",
    "SharedInputPath",
    "SharedOutputPath",
    "TransferError",
    "TransferErrorCode",
    "decode",
    "encode",
    "is_valid_job_id",
]
