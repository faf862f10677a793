"""Frames on a byte stream: length, header, body, boundary.

A frame is::

    u64 length (little-endian) of what follows up to the boundary
    4 x i64 header: response.whence, response.id, notify.whence, notify.id
    body (opaque bytes: the codec's encoding of one message)
    10-byte boundary

Julia finds message ends by scanning for its boundary; we carry an explicit
length so that a body the receiver cannot decode is skipped exactly, and keep
the boundary as a check that the two sides agree on where frames end.  A
frame whose boundary is wrong means the stream is corrupt: that is a protocol
violation and the connection must be closed.

The decoder is a small buffer that accepts bytes in any split (whole frames,
fragments, a byte at a time) and yields the same frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from spec.api import RRID

from .messages import NULL_RRID, Header

BOUNDARY = bytes.fromhex("798e8ef56e9b2e97d57d")
_LENGTH = struct.Struct("<Q")
_HEADER = struct.Struct("<qqqq")
#: Length and header together: one pack or unpack per frame instead of two.
_PREFIX = struct.Struct("<Qqqqq")
# Sizes as plain ints: read for every frame.
_LENGTH_SIZE = _LENGTH.size
_HEADER_SIZE = _HEADER.size
_PREFIX_SIZE = _PREFIX.size
_BOUNDARY_SIZE = len(BOUNDARY)

#: Frames larger than this are refused as corrupt rather than buffered.
MAX_FRAME = 1 << 40


class FramingError(Exception):
    """The byte stream does not hold well-formed frames: close the connection."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its header and the still-encoded body."""

    header: Header
    body: bytes


def encode_frame(header: Header, body: bytes) -> bytes:
    """Return the bytes of one frame carrying ``header`` and ``body``."""
    response, notify = header.response, header.notify
    prefix = _PREFIX.pack(
        _HEADER_SIZE + len(body),
        response.whence,
        response.id,
        notify.whence,
        notify.id,
    )
    return b"".join((prefix, body, BOUNDARY))


class FrameDecoder:
    """Accumulates bytes and yields complete frames in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises ``FramingError`` when the stream is corrupt.
        """
        buf = self._buffer
        have = len(buf)
        if have < _LENGTH_SIZE:
            return None

        (length,) = _LENGTH.unpack_from(buf, 0)
        if length < _HEADER_SIZE or length > MAX_FRAME:
            raise FramingError(f"frame length {length} is out of range")

        end = _LENGTH_SIZE + length
        total = end + _BOUNDARY_SIZE
        if have < total:
            return None

        if buf[end:total] != BOUNDARY:
            raise FramingError("frame boundary mismatch: the stream is corrupt")

        _, rw, ri, nw, ni = _PREFIX.unpack_from(buf, 0)
        body = bytes(buf[_PREFIX_SIZE:end])
        del buf[:total]
        return Frame(Header(_rrid(rw, ri), _rrid(nw, ni)), body)


def _rrid(whence: int, ident: int) -> RRID:
    # Most headers name one reference and leave the other null: share it.
    if ident == 0 and whence == 0:
        return NULL_RRID
    return RRID(whence, ident)
