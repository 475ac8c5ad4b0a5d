"""The job protocol, sans-IO: messages, their codec, one Connection per channel, errors.

Nothing in this package performs I/O or imports asyncio, aiortc or aiohttp: bytes
and text go in, typed messages and decisions come out.

Public API::

    from protocol import decode, encode, ProtocolError, LocalProtocolError, RemoteProtocolError
    message = decode("SHARED_INPUT_PATH::data/train.zip")   # -> SharedInputPath(path=...)
    frame = encode(PathValidated("input"))                   # -> "PATH_VALIDATED::input"

Every message class of :mod:`protocol.messages`, :mod:`protocol.transfer_messages`,
:mod:`protocol.relay_messages` and :mod:`protocol.auth_messages` is importable from here.
"""

from protocol import auth_messages, messages, transfer_messages
from protocol.auth_messages import *  # noqa: F403 (the handshake frames)
from protocol.codec import FRAME_TYPES, MESSAGE_TYPES, decode, encode
from protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    PathReason,
    ProtocolError,
    RelayEndCode,
    RemoteProtocolError,
    TransferErrorCode,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import *  # noqa: F403 (the job frames)
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.transfer_messages import *  # noqa: F403 (the transfer frames)

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_TYPES",
    "MESSAGE_TYPES",
    "ErrorCode",
    "Limits",
    "LocalProtocolError",
    "PathReason",
    "ProtocolError",
    "RelayEndCode",
    "RelayEnded",
    "RelayPart",
    "RelayStop",
    "RemoteProtocolError",
    "TransferErrorCode",
    "decode",
    "encode",
]
__all__ += messages.__all__
__all__ += transfer_messages.__all__
__all__ += auth_messages.__all__
