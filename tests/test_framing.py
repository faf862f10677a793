"""Tests of ``ref.protocol.framing``: frames in, the same frames out.

No sockets: bytes are built with ``encode_frame`` and fed to a
``FrameDecoder`` whole, in random pieces and a byte at a time.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ref.protocol.framing import (
    BOUNDARY,
    MAX_FRAME,
    Frame,
    FrameDecoder,
    FramingError,
    encode_frame,
)
from ref.protocol.messages import NULL_RRID, Header
from spec.api import RRID

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
RRIDS = st.builds(RRID, INT64, INT64)
HEADERS = st.builds(Header, RRIDS, RRIDS)
FRAMES = st.lists(
    st.builds(Frame, HEADERS, st.binary(max_size=64)), min_size=1, max_size=8
)


def stream_of(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.header, f.body) for f in frames)


def drain(decoder: FrameDecoder, *, limit: int = 10_000) -> list[Frame]:
    """Every complete frame the decoder holds now (bounded)."""
    out: list[Frame] = []
    for _ in range(limit):
        frame = decoder.next_frame()
        if frame is None:
            return out
        out.append(frame)
    raise AssertionError(f"decoder produced more than {limit} frames")


def decode_in_pieces(data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed ``data`` split at ``cuts``, pulling frames after every piece."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        decoder.feed(data[start:end])
        frames += drain(decoder)
    assert decoder.buffered == 0
    return frames


@settings(deadline=None)  # pure CPU; timing varies under load
@given(HEADERS, st.binary(max_size=256))
def test_one_frame_round_trips(header: Header, body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(header, body))
    assert decoder.next_frame() == Frame(header, body)
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_frame_layout_is_length_header_body_boundary() -> None:
    header = Header(RRID(1, 2), RRID(3, 4))
    data = encode_frame(header, b"xyz")
    (length,) = struct.unpack_from("<Q", data, 0)
    assert length == 32 + 3
    assert struct.unpack_from("<qqqq", data, 8) == (1, 2, 3, 4)
    assert data[40:43] == b"xyz"
    assert data[43:] == BOUNDARY
    assert len(BOUNDARY) == 10


@settings(deadline=None)  # pure CPU; timing varies under load
@given(FRAMES)
def test_whole_stream_yields_every_frame_in_order(frames: list[Frame]) -> None:
    assert decode_in_pieces(stream_of(frames), []) == frames


@settings(deadline=None)  # pure CPU; timing varies under load
@given(FRAMES, st.data())
def test_random_splits_yield_the_same_frames(
    frames: list[Frame], data: st.DataObject
) -> None:
    raw = stream_of(frames)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert decode_in_pieces(raw, cuts) == frames


@settings(deadline=None)  # pure CPU; timing varies under load
@given(FRAMES)
def test_byte_by_byte_yields_the_same_frames(frames: list[Frame]) -> None:
    raw = stream_of(frames)
    assert decode_in_pieces(raw, list(range(len(raw)))) == frames


def test_incomplete_frame_waits_for_more_bytes() -> None:
    raw = encode_frame(Header(), b"body")
    decoder = FrameDecoder()
    decoder.feed(raw[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(raw) - 1
    decoder.feed(raw[-1:])
    assert decoder.next_frame() == Frame(Header(NULL_RRID, NULL_RRID), b"body")


def test_fewer_bytes_than_the_length_field_wait() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x01\x02")
    assert decoder.next_frame() is None


@pytest.mark.parametrize("index", range(len(BOUNDARY)))
def test_corrupt_boundary_raises_framing_error(index: int) -> None:
    raw = bytearray(encode_frame(Header(RRID(1, 1)), b"payload"))
    raw[len(raw) - len(BOUNDARY) + index] ^= 0xFF
    decoder = FrameDecoder()
    decoder.feed(raw)
    with pytest.raises(FramingError, match="boundary"):
        decoder.next_frame()


def test_wrong_length_misplaces_the_boundary_and_raises() -> None:
    """A length that is off by one points the check at the wrong bytes."""
    raw = bytearray(encode_frame(Header(), b"payload"))
    struct.pack_into("<Q", raw, 0, 32 + len(b"payload") - 1)
    decoder = FrameDecoder()
    decoder.feed(raw)
    with pytest.raises(FramingError):
        decoder.next_frame()


@pytest.mark.parametrize("length", [0, 31, MAX_FRAME + 1, 2**64 - 1])
def test_length_out_of_range_raises_before_buffering(length: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("<Q", length))
    with pytest.raises(FramingError, match="out of range"):
        decoder.next_frame()


def test_frame_after_a_good_one_is_still_checked() -> None:
    good = encode_frame(Header(), b"a")
    bad = bytearray(encode_frame(Header(), b"b"))
    bad[-1] ^= 1
    decoder = FrameDecoder()
    decoder.feed(good + bad)
    assert decoder.next_frame() == Frame(Header(), b"a")
    with pytest.raises(FramingError):
        decoder.next_frame()
