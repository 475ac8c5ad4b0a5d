"""The sender's hot path: a file's chunks read in a thread and put on a data channel.

:func:`send_chunks` streams a file from an offset: a thread reads it a block
(:data:`READ_BLOCK_BYTES`) at a time as ready-made chunks (:func:`read_chunks`: one
``pread`` per chunk, so each chunk is its own ``bytes`` object and nothing is sliced,
copied or allocated per chunk on the event loop); the loop lets each chunk through the
connection (:meth:`Connection.send_chunk`, which counts it or says stop) and sends it,
waiting on the channel's ``bufferedAmount`` (:meth:`FrameChannel.drained`) only when
more than the high-water mark is queued. The chunk size is the connection's
``limits.chunk_bytes``, which :meth:`FrameChannel.sending_limits` fitted to the remote's
``max-message-size``. Never whole in memory: one block read ahead at most.

Source: DESIGN.md, "A channel transfer"; aiortc's datachannel-filexfer example.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from protocol.connection import Connection
from rtc_worker.rtc import FrameChannel

__all__ = ["READ_BLOCK_BYTES", "read_chunks", "send_chunks"]

#: Files are read in blocks of this many bytes, in a thread.
READ_BLOCK_BYTES = 1024 * 1024


def read_chunks(fd: int, offset: int, block_bytes: int, chunk_bytes: int) -> list[bytes]:
    """Read up to ``block_bytes`` of ``fd`` from ``offset`` as chunks of at most
    ``chunk_bytes`` bytes, one ``pread`` each (blocking: call it in a thread).

    Returns:
        The chunks in order, together the bytes ``[offset, offset + block_bytes)`` or up
        to the end of the file; ``[]`` at the end of the file. A short read ends a chunk
        early (the next chunk goes on from there), as the protocol allows.

    Raises:
        OSError: a read failed.
    """
    chunks: list[bytes] = []
    position, end = offset, offset + block_bytes
    while position < end:
        chunk = os.pread(fd, min(chunk_bytes, end - position), position)
        if not chunk:
            break
        chunks.append(chunk)
        position += len(chunk)
    return chunks


async def send_chunks(
    conn: Connection,
    channel: FrameChannel,
    fd: int,
    offset: int,
    *,
    high_water: int,
    low_water: int,
    sent: Callable[[int], None],
) -> bool:
    """Stream the file open at ``fd`` from byte ``offset`` to its end.

    Args:
        conn: the connection whose open transfer this is (its sender lets each chunk
            through, or says stop: cancelled, ended, closed).
        channel: the data channel.
        high_water / low_water: flow-control marks on ``bufferedAmount``, bytes.
        sent: told the size of each chunk put on the channel, bytes.

    Returns:
        True when every chunk to the end of the file was sent; False when the
        connection or the channel stopped it.

    Raises:
        OSError: reading the file failed.
    """
    size = conn.limits.chunk_bytes
    raw, closed = channel.channel, channel.closed
    send_chunk, send_frame = conn.send_chunk, channel.send_frame
    position = offset
    while chunks := await asyncio.to_thread(read_chunks, fd, position, READ_BLOCK_BYTES, size):
        for chunk in chunks:
            if closed.is_set():
                return False
            if raw.bufferedAmount > high_water and not await channel.drained(high_water, low_water):
                return False
            frame = send_chunk(chunk)
            if frame is None or not send_frame(frame):
                return False
            sent(len(frame))
        position += sum(map(len, chunks))
    return True
