"""The client's decisions inside a :class:`~protocol.connection.Connection` (sans-IO).

The client may send a job message only where :data:`~protocol.job.CLIENT_TABLE`
(derived from the worker's table) allows it; each reply moves its view of the
worker's session the way the matching outcome moved the worker, and is handed to the
caller as :class:`~protocol.events.Delivered`. A ``PROTOCOL_ERROR`` is attributed to
the request it answers (:data:`~protocol.routes.REQUEST_OF_CODE`, else the request
that is pending) and handed over as :class:`~protocol.events.Refused`. Only
:class:`~protocol.connection.Connection` uses this.

Source: PROTOCOL.md sections 2.1-2.2 and 4.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.events import Delivered, Note, Refused, SendEnded
from protocol.job import CLIENT_SENDS, CLIENT_TABLE, ClientJobState, JobKey, Outcome, Pending
from protocol.messages import (
    Message,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
)
from protocol.routes import REQUEST_OF_CODE, Part, reply_key

if TYPE_CHECKING:
    from protocol.connection import Connection

__all__ = ["ClientSide"]

_REFUSED_REQUEST = {
    "input": Outcome.INPUT_REJECTED,
    "output": Outcome.OUTPUT_REJECTED,
    "start": Outcome.START_REFUSED,
}


class ClientSide:
    """The client role's decisions (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @property
    def state(self) -> ClientJobState:
        """The client's view of the worker's session, with its pending request."""
        state = self.conn.job
        assert isinstance(state, ClientJobState)
        return state

    def _move(self, key: JobKey) -> bool:
        nxt = CLIENT_TABLE.get((self.state, key))
        if nxt is None:
            return False
        self.conn.job = nxt
        return True

    def send(self, message: Message) -> None:
        """Send a client message if this role's tables allow it now.

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE otherwise (nothing is sent).
        """
        if isinstance(message, ResultsRequest):
            self.conn.receiver.request(message)
        elif not isinstance(message, CLIENT_SENDS) or not self._move(type(message)):
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"a client may not send {message.TYPE} in state {self.state}",
            )
        self.conn.emit(message)

    def receive(self, part: Part, message: Message) -> None:
        """Handle a job reply or a PROTOCOL_ERROR from the worker.

        Raises:
            RemoteProtocolError: the reply is not allowed now (nothing changes).
        """
        if isinstance(message, ProtocolErrorFrame):
            self._refused(message)
            return
        if not isinstance(message, ResultsStored):
            outcome = reply_key(type(message), self.state.pending)
            if isinstance(message, PathValidated) and message.which == "output":
                outcome = Outcome.OUTPUT_ACCEPTED
            if not self._move(outcome):
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"can't handle {message.TYPE} in state {self.state}",
                )
        self.conn.emit(Delivered(message))

    def _refused(self, message: ProtocolErrorFrame) -> None:
        pending = self.state.pending
        request = REQUEST_OF_CODE.get(message.code, "")
        if request == "path" or (not request and pending is not Pending.NONE):
            request = (
                pending.value if pending in (Pending.INPUT, Pending.OUTPUT, Pending.START) else ""
            )
        if not request:
            if self.conn.receiver.state == "REQUESTED":
                request = "results"
            elif self.conn.sender.state == "AWAIT_READY":
                request = "file"
        if (request in _REFUSED_REQUEST and not self._move(_REFUSED_REQUEST[request])) or (
            request == "results" and not self.conn.receiver.refused(message)
        ):
            request = ""
        elif request == "file":
            self.conn.emit(*self.conn.sender.receive(message))
        self.conn.emit(Refused(message.code, message.detail, request))

    def upload_ended(self, ended: SendEnded) -> None:
        """Our file transfer ended: a held file is the worker's next job input."""
        if ended.status in ("received", "exists") and not self._move(Outcome.FILE_ACCEPTED):
            self.conn.emit(Note("the worker holds our file, but not as the next job's input"))
