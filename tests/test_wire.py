"""Tests of ``ref.protocol.wire``: the handshake and framing of one link.

Two ``WireConnection`` objects, an initiator and an acceptor, are joined back
to back through plain bytes (the h11 ``ConnectionPair`` trick), so every
message type travels both ways without a socket.  The handshake tests prove
that nothing from an unauthenticated peer is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import pickle
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ref.protocol.codec import CloudpickleCodec
from ref.protocol.framing import BOUNDARY, encode_frame
from ref.protocol.messages import (
    MESSAGE_TYPES,
    CallMsg,
    CallWaitMsg,
    ClientsMsg,
    DeregisterMsg,
    ExitMsg,
    Header,
    IdentifySocketAckMsg,
    IdentifySocketMsg,
    JoinCompleteMsg,
    JoinPGRPMsg,
    Message,
    RemoteDoMsg,
    ResultMsg,
    SetPeersMsg,
)
from ref.protocol.wire import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Authenticated,
    AuthenticationError,
    Closed,
    Event,
    ProtocolError,
    Received,
    Role,
    Undecodable,
    WireConnection,
    WireState,
    pad_version,
)
from spec.api import COOKIE_LENGTH, RRID, VERSION_LENGTH

COOKIE = b"0123456789abcdef"
OTHER_COOKIE = b"0123456789abcdeX"

SAMPLES: list[Message] = [
    CallMsg(operator.add, (1, 2), {}, "call"),
    CallMsg(sorted, ([3, 1, 2],), {"reverse": True}, "call_fetch"),
    CallWaitMsg(operator.mul, (6, 7), {}),
    RemoteDoMsg(print, ("hi",), {"end": ""}),
    ResultMsg({"value": [1, "two", 3.0], "rrid": RRID(2, 5)}),
    JoinPGRPMsg(4, ((2, "127.0.0.1", 9002), (3, "127.0.0.1", 9003)), "all_to_all"),
    JoinCompleteMsg(cpu_threads=8, ospid=4242),
    IdentifySocketMsg(from_pid=3),
    IdentifySocketAckMsg(),
    ExitMsg(),
    SetPeersMsg(((2, "127.0.0.1", 9002), (3, "127.0.0.1", 9003))),
    DeregisterMsg(pid=3),
    ClientsMsg(((True, RRID(1, 7), 3), (False, RRID(1, 7), 3))),
]

HEADERS = [
    Header(),
    Header(response=RRID(1, 2)),
    Header(notify=RRID(3, 4)),
    Header(RRID(5, 6), RRID(7, 8)),
]

#: Records every Tripwire that was unpickled; must stay empty when the
#: cookie is wrong.
TRIPPED: list[str] = []


def _trip(label: str) -> str:
    TRIPPED.append(label)
    return label


class Tripwire:
    """Unpickling this object appends to ``TRIPPED``."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __reduce__(self) -> tuple[Any, ...]:
        return (_trip, (self.label,))


def _explode() -> None:
    raise RuntimeError("this object refuses to be unpickled")


class Unloadable:
    """Pickles fine; unpickling raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


class RecordingCodec(CloudpickleCodec):
    """The default codec, counting how often it was asked to decode."""

    def __init__(self) -> None:
        self.loads_calls = 0

    def loads(self, data: bytes) -> object:
        self.loads_calls += 1
        return super().loads(data)


@pytest.fixture(autouse=True)
def _reset_tripwire() -> None:
    TRIPPED.clear()


def events(conn: WireConnection, *, limit: int = 1000) -> list[Event]:
    """Every event ``conn`` can produce now, up to NEED_DATA or Closed."""
    out: list[Event] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
        if isinstance(event, Closed):
            return out
    raise AssertionError(f"more than {limit} events")


def new_pair(
    codec: CloudpickleCodec | None = None,
) -> tuple[WireConnection, WireConnection]:
    """An initiator and an acceptor that completed the handshake."""
    codec = codec or CloudpickleCodec()
    initiator = WireConnection(Role.INITIATOR, COOKIE, codec)
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, codec)
    acceptor.receive_data(initiator.hello())
    (accepted,) = events(acceptor)
    assert isinstance(accepted, Authenticated)
    initiator.receive_data(accepted.reply)
    (answered,) = events(initiator)
    assert isinstance(answered, Authenticated)
    return initiator, acceptor


def deliver(
    sender: WireConnection, receiver: WireConnection, header: Header, msg: Message
) -> list[Event]:
    receiver.receive_data(sender.send(header, msg))
    return events(receiver)


def wrong_cookie_then(frame: bytes) -> bytes:
    return OTHER_COOKIE + pad_version(PROTOCOL_VERSION) + frame


def tripwire_frame(label: str) -> bytes:
    return encode_frame(Header(RRID(1, 1), RRID(1, 2)), pickle.dumps(Tripwire(label)))


# ----------------------------------------------------------------- handshake


def test_handshake_opens_both_sides_and_exchanges_versions() -> None:
    initiator = WireConnection(Role.INITIATOR, COOKIE, CloudpickleCodec(), "init-v")
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec(), "acc-v")
    assert initiator.state is WireState.AWAIT_VERSION
    assert acceptor.state is WireState.AWAIT_COOKIE

    hello = initiator.hello()
    assert hello == COOKIE + pad_version("init-v")
    acceptor.receive_data(hello)
    assert events(acceptor) == [Authenticated("init-v", pad_version("acc-v"))]
    assert acceptor.state is WireState.OPEN
    assert acceptor.peer_version == "init-v"

    initiator.receive_data(pad_version("acc-v"))
    assert events(initiator) == [Authenticated("acc-v", b"")]
    assert initiator.state is WireState.OPEN
    assert initiator.peer_version == "acc-v"


def test_handshake_bytes_one_at_a_time_need_data_until_complete() -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    hello = COOKIE + pad_version(PROTOCOL_VERSION)
    for byte in hello[:-1]:
        acceptor.receive_data(bytes([byte]))
        assert acceptor.next_event() is NEED_DATA
    acceptor.receive_data(hello[-1:])
    assert isinstance(acceptor.next_event(), Authenticated)


def test_pad_version_pads_and_truncates_to_the_fixed_length() -> None:
    assert pad_version("1.0") == b"1.0" + b" " * (VERSION_LENGTH - 3)
    assert pad_version("x" * 40) == b"x" * VERSION_LENGTH
    assert len(pad_version("")) == VERSION_LENGTH


def test_cookie_of_the_wrong_length_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=str(COOKIE_LENGTH)):
        WireConnection(Role.INITIATOR, b"short", CloudpickleCodec())


def test_only_the_initiator_says_hello() -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    with pytest.raises(ProtocolError):
        acceptor.hello()


def test_acceptor_cannot_send_before_authentication() -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    with pytest.raises(ProtocolError, match="await-cookie"):
        acceptor.send(Header(), ExitMsg())


def test_initiator_may_send_before_the_version_arrives() -> None:
    """Frames sent right behind the hello reach the acceptor in order."""
    initiator = WireConnection(Role.INITIATOR, COOKIE, CloudpickleCodec())
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    first = initiator.send(Header(), IdentifySocketMsg(5))
    acceptor.receive_data(initiator.hello() + first)
    got = events(acceptor)
    assert isinstance(got[0], Authenticated)
    assert got[1:] == [Received(Header(), IdentifySocketMsg(5))]


def test_wrong_cookie_raises_and_nothing_is_unpickled() -> None:
    codec = RecordingCodec()
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, codec)
    acceptor.receive_data(wrong_cookie_then(tripwire_frame("wrong-cookie")))
    with pytest.raises(AuthenticationError, match="Invalid connection credentials"):
        acceptor.next_event()
    assert acceptor.state is WireState.ERROR
    with pytest.raises(ProtocolError):
        acceptor.next_event()
    assert TRIPPED == []
    assert codec.loads_calls == 0


def test_the_tripwire_does_fire_after_a_good_cookie() -> None:
    """Control for the test above: the same frame, correctly introduced."""
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    acceptor.receive_data(
        COOKIE + pad_version(PROTOCOL_VERSION) + tripwire_frame("good-cookie")
    )
    got = events(acceptor)
    assert isinstance(got[0], Authenticated)
    assert isinstance(got[1], Undecodable)  # a str, not a message
    assert TRIPPED == ["good-cookie"]


def test_wrong_cookie_is_refused_without_waiting_for_the_version() -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    acceptor.receive_data(OTHER_COOKIE)
    with pytest.raises(AuthenticationError):
        acceptor.next_event()


@settings(deadline=None)  # pure CPU; timing varies under load
@given(st.binary(min_size=COOKIE_LENGTH, max_size=COOKIE_LENGTH))
def test_any_other_cookie_is_refused(cookie: bytes) -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    acceptor.receive_data(cookie + pad_version("v") + tripwire_frame("any"))
    if cookie == COOKIE:
        assert isinstance(acceptor.next_event(), Authenticated)
        return
    with pytest.raises(AuthenticationError):
        acceptor.next_event()
    assert TRIPPED == []


@pytest.mark.parametrize("sent", [b"", COOKIE[:1], COOKIE[:-1]])
def test_eof_inside_the_cookie_is_an_authentication_error(sent: bytes) -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    if sent:
        acceptor.receive_data(sent)
        assert acceptor.next_event() is NEED_DATA
    acceptor.receive_data(b"")
    with pytest.raises(AuthenticationError, match="Cookie read failed"):
        acceptor.next_event()
    assert acceptor.state is WireState.ERROR


@pytest.mark.parametrize("version_bytes", [0, 1, VERSION_LENGTH - 1])
def test_eof_inside_the_version_is_an_authentication_error(version_bytes: int) -> None:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    acceptor.receive_data(COOKIE + pad_version("v")[:version_bytes])
    assert acceptor.next_event() is NEED_DATA
    acceptor.receive_data(b"")
    with pytest.raises(AuthenticationError, match="Version read failed"):
        acceptor.next_event()


def test_initiator_eof_before_the_version_is_a_protocol_error() -> None:
    initiator = WireConnection(Role.INITIATOR, COOKIE, CloudpickleCodec())
    initiator.receive_data(b"dist")
    assert initiator.next_event() is NEED_DATA
    initiator.receive_data(b"")
    with pytest.raises(ProtocolError, match="Version read failed"):
        initiator.next_event()
    assert initiator.state is WireState.ERROR


# ---------------------------------------------------------- message exchange


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("header", HEADERS, ids=str)
def test_every_message_type_travels_both_ways(msg: Message, header: Header) -> None:
    initiator, acceptor = new_pair()
    assert deliver(initiator, acceptor, header, msg) == [Received(header, msg)]
    assert deliver(acceptor, initiator, header, msg) == [Received(header, msg)]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_codec_round_trips_every_message_type(msg: Message) -> None:
    codec = CloudpickleCodec()
    assert codec.loads(codec.dumps(msg)) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_pickles_its_fields_in_order_as_dataclasses_would(
    msg: Message,
) -> None:
    """The quick state methods keep the pickled form: a list of field values."""
    values = [getattr(msg, field.name) for field in dataclasses.fields(msg)]
    assert msg.__getstate__() == values
    copy = object.__new__(type(msg))
    copy.__setstate__(values)
    assert copy == msg


def test_a_burst_of_every_message_arrives_in_order() -> None:
    initiator, acceptor = new_pair()
    burst = b"".join(initiator.send(h, m) for h in HEADERS for m in SAMPLES)
    acceptor.receive_data(burst)
    expected = [Received(h, m) for h in HEADERS for m in SAMPLES]
    assert events(acceptor) == expected


def conversation() -> tuple[bytes, list[Event]]:
    """Hello plus one frame of every sample, and what the acceptor sees."""
    initiator = WireConnection(Role.INITIATOR, COOKIE, CloudpickleCodec())
    frames = [
        initiator.send(Header(RRID(1, i), RRID(2, i)), m) for i, m in enumerate(SAMPLES)
    ]
    expected: list[Event] = [
        Authenticated(PROTOCOL_VERSION, pad_version(PROTOCOL_VERSION))
    ]
    expected += [
        Received(Header(RRID(1, i), RRID(2, i)), m) for i, m in enumerate(SAMPLES)
    ]
    return initiator.hello() + b"".join(frames), expected


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Event]:
    acceptor = WireConnection(Role.ACCEPTOR, COOKIE, CloudpickleCodec())
    out: list[Event] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            acceptor.receive_data(data[start:end])
        out += events(acceptor)
    return out


@settings(deadline=None)  # pure CPU; timing varies under load
@given(st.data())
def test_conversation_in_random_splits_yields_the_same_events(
    data: st.DataObject,
) -> None:
    raw, expected = conversation()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=30))
    assert feed_in_pieces(raw, cuts) == expected


def test_conversation_byte_by_byte_yields_the_same_events() -> None:
    raw, expected = conversation()
    assert feed_in_pieces(raw, []) == expected
    assert feed_in_pieces(raw, list(range(len(raw)))) == expected


# ------------------------------------------------------- undecodable bodies


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"definitely not a pickle", Exception),
        (pickle.dumps(Unloadable()), RuntimeError),
        (pickle.dumps(42), ProtocolError),
    ],
    ids=["garbage", "raising-reduce", "not-a-message"],
)
def test_undecodable_body_is_reported_and_the_next_frame_decodes(
    body: bytes, error: type[BaseException]
) -> None:
    initiator, acceptor = new_pair()
    header = Header(RRID(1, 9), RRID(1, 10))
    raw = encode_frame(header, body) + initiator.send(Header(), DeregisterMsg(7))
    acceptor.receive_data(raw)
    bad, good = events(acceptor)
    assert isinstance(bad, Undecodable)
    assert bad.header == header
    assert isinstance(bad.error, error)
    assert good == Received(Header(), DeregisterMsg(7))
    assert acceptor.state is WireState.OPEN


def test_unpicklable_message_raises_and_leaves_the_connection_usable() -> None:
    initiator, acceptor = new_pair()
    with pytest.raises((TypeError, pickle.PicklingError)):
        initiator.send(Header(), ResultMsg(threading.Lock()))
    assert initiator.state is WireState.OPEN
    assert deliver(initiator, acceptor, Header(), ExitMsg()) == [
        Received(Header(), ExitMsg())
    ]


# ------------------------------------------------------- end of the stream


def test_eof_at_a_frame_boundary_is_closed_for_good() -> None:
    initiator, acceptor = new_pair()
    acceptor.receive_data(initiator.send(Header(), ExitMsg()))
    acceptor.receive_data(b"")
    assert events(acceptor) == [Received(Header(), ExitMsg()), Closed()]
    assert acceptor.state is WireState.CLOSED
    assert acceptor.next_event() == Closed()


def test_eof_inside_a_frame_is_a_protocol_error() -> None:
    initiator, acceptor = new_pair()
    acceptor.receive_data(initiator.send(Header(), ExitMsg())[:-3])
    assert acceptor.next_event() is NEED_DATA
    acceptor.receive_data(b"")
    with pytest.raises(ProtocolError, match="inside a frame"):
        acceptor.next_event()
    assert acceptor.state is WireState.ERROR


def test_corrupt_boundary_puts_the_connection_in_its_error_state() -> None:
    initiator, acceptor = new_pair()
    raw = bytearray(initiator.send(Header(), ExitMsg()))
    raw[-len(BOUNDARY)] ^= 0x01
    acceptor.receive_data(bytes(raw) + initiator.send(Header(), ExitMsg()))
    with pytest.raises(ProtocolError, match="boundary"):
        acceptor.next_event()
    assert acceptor.state is WireState.ERROR
    with pytest.raises(ProtocolError, match="error state"):
        acceptor.next_event()


def test_send_failed_refuses_further_use() -> None:
    initiator, _ = new_pair()
    initiator.send_failed()
    assert initiator.state is WireState.ERROR
    with pytest.raises(ProtocolError):
        initiator.send(Header(), ExitMsg())
    with pytest.raises(ProtocolError):
        initiator.next_event()
