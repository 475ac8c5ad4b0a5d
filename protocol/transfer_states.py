"""The states of both transfer directions (their tables are in :mod:`protocol.transfer`,
:mod:`protocol.sender` and :mod:`protocol.relay`).

Source: PROTOCOL.md sections 4.4-4.6.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ReceiverState", "SenderOp", "SenderState"]


class ReceiverState(StrEnum):
    """States of the receiving side of one data channel."""

    #: No transfer open.
    IDLE = "IDLE"
    #: (Client) RESULTS_REQUEST sent: the worker's FILE_META or its refusal comes next.
    REQUESTED = "REQUESTED"
    #: FILE_META accepted; the store is asked what it holds (or, after FILE_PROOF, the
    #: digest of the same ranges of the held copy).
    CHECKING = "CHECKING"
    #: (Proving possession) FILE_PROOF_REQUEST sent: the sender's FILE_PROOF, or the
    #: deadline, comes next; the principal's own partial is open at offset 0.
    PROVING = "PROVING"
    #: FILE_READY sent (or a legacy transfer opened): chunks are appended (or, after
    #: RELAY_ENDED, the transfer goes on from the verified offset).
    RECEIVING = "RECEIVING"
    #: (Relay road) a RELAY_PART is being fetched, decrypted and appended; later parts
    #: wait in a queue of at most ``Limits.max_relay_parts``.
    RELAYING = "RELAYING"
    #: (Relay road) the fetch is being stopped (RELAY_STOP, or too many parts): RELAY_ENDED
    #: follows with the verified offset once the adapter reports where it stopped.
    HALTING = "HALTING"
    #: Every byte arrived: the sha256 is being verified.
    VERIFYING = "VERIFYING"
    #: The transfer was aborted; its remaining chunks are dropped without replies
    #: until END_OF_FILE, FILE_CANCEL or the next FILE_META.
    DRAINING = "DRAINING"


class SenderState(StrEnum):
    """States of the sending side of one data channel."""

    #: No transfer open.
    IDLE = "IDLE"
    #: (Worker) RESULTS_REQUEST taken: finding the job's outputs and packing the ZIP.
    PREPARING = "PREPARING"
    #: FILE_META sent; waiting for FILE_READY or FILE_EXISTS (or FILE_PROOF_REQUEST).
    AWAIT_READY = "AWAIT_READY"
    #: FILE_PROOF_REQUEST taken: the asked ranges of our file are being read.
    PROVING = "PROVING"
    #: FILE_PROOF sent; waiting for FILE_READY or FILE_EXISTS.
    PROVED = "PROVED"
    #: Streaming chunks from the receiver's offset.
    SENDING = "SENDING"
    #: (Relay road) uploading parts and announcing them with RELAY_PART; FILE_RECEIVED
    #: ends the transfer, RELAY_ENDED moves it to the channel (or cancels it).
    RELAYING = "RELAYING"
    #: (Relay road) RELAY_STOP sent: waiting for the receiver's RELAY_ENDED.
    RELAY_STOPPING = "RELAY_STOPPING"
    #: END_OF_FILE sent; waiting for FILE_RECEIVED.
    AWAIT_RECEIVED = "AWAIT_RECEIVED"
    #: We sent FILE_CANCEL: the receiver's frames about that transfer that were already
    #: on their way are absorbed until it acknowledges with TRANSFER_ERROR.
    CANCELLED = "CANCELLED"


class SenderOp(StrEnum):
    """Our own steps that are not frames we send."""

    #: We stop the open transfer (FILE_CANCEL goes out).
    CANCEL = "cancel"
    #: We stop waiting for the acknowledgement of our FILE_CANCEL.
    GIVE_UP = "give up"
