"""One connection between two processes, as a sans-I/O state machine.

``WireConnection`` owns the handshake and the framing of one byte stream and
nothing else: it never touches a socket, a clock or a random source.  The
shell feeds it received bytes (``receive_data``), pulls events out
(``next_event``) and writes the bytes it is given (``hello``, ``send``).

The handshake, after Julia's: the side that opened the connection (the
initiator) sends the 16-byte cluster cookie and its 16-byte version string,
then may send frames at once.  The acceptor reads the cookie, compares it in
constant time, reads the version and answers with its own version only.
Nothing the peer sent is decoded before the cookie matched: until then the
acceptor looks at exactly 32 raw bytes, and a mismatch raises
``AuthenticationError`` with the connection in its error state.

States, per role::

    initiator: AWAIT_VERSION --version--> OPEN
    acceptor:  AWAIT_COOKIE --cookie ok--> OPEN   (cookie bad: ERROR)
    any:       --bytes b""--> CLOSED; --corrupt frame--> ERROR
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from spec.api import COOKIE_LENGTH, VERSION_LENGTH

from .codec import Codec
from .framing import FrameDecoder, FramingError, encode_frame
from .messages import MESSAGE_TYPES, Header, Message

PROTOCOL_VERSION = "distref-1"


def pad_version(text: str) -> bytes:
    """Encode a version string as exactly ``VERSION_LENGTH`` bytes."""
    raw = text.encode("ascii", "replace")[:VERSION_LENGTH]
    return raw.ljust(VERSION_LENGTH, b" ")


class Role(enum.Enum):
    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"


class WireState(enum.Enum):
    AWAIT_COOKIE = "await-cookie"
    AWAIT_VERSION = "await-version"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is unusable."""


class AuthenticationError(ProtocolError):
    """The peer's cookie was missing, short or wrong."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake finished; ``reply`` are bytes the shell must send now."""

    peer_version: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """A message arrived."""

    header: Header
    message: Message


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A frame arrived whose body could not be decoded; the stream is fine.

    The receiver should report ``error`` to whoever ``header`` names.
    """

    header: Header
    error: BaseException


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the stream cleanly (at a frame boundary)."""


class NeedData(enum.Enum):
    """No event can be produced until more bytes arrive."""

    NEED_DATA = "need-data"


NEED_DATA = NeedData.NEED_DATA

# Enum members as module globals: looking one up on its class costs several
# times more, and the open state is checked for every frame.
_OPEN = WireState.OPEN
_AWAIT_COOKIE = WireState.AWAIT_COOKIE
_AWAIT_VERSION = WireState.AWAIT_VERSION
_CLOSED = WireState.CLOSED
_ERROR = WireState.ERROR

Event = Authenticated | Received | Undecodable | Closed


class WireConnection:
    """The handshake and framing of one stream, for one role."""

    def __init__(
        self, role: Role, cookie: bytes, codec: Codec, version: str = PROTOCOL_VERSION
    ) -> None:
        if len(cookie) != COOKIE_LENGTH:
            raise ValueError(
                f"cookie must be exactly {COOKIE_LENGTH} bytes, got {len(cookie)}"
            )
        self.role = role
        self._cookie = cookie
        self._codec = codec
        self._version = pad_version(version)
        self._raw = bytearray()
        self._frames = FrameDecoder()
        self._eof = False
        self.peer_version: str | None = None
        if role is Role.ACCEPTOR:
            self.state = WireState.AWAIT_COOKIE
        else:
            self.state = WireState.AWAIT_VERSION

    def hello(self) -> bytes:
        """The initiator's opening bytes: cookie then version."""
        if self.role is not Role.INITIATOR:
            raise ProtocolError("only the initiator sends the cookie")
        return self._cookie + self._version

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed."""
        if not data:
            self._eof = True
        elif self.state is _AWAIT_COOKIE or self.state is _AWAIT_VERSION:
            self._raw += data
        else:
            self._frames.feed(data)

    def next_event(self) -> Event | NeedData:
        """Return the next event, or ``NEED_DATA``; raises ``ProtocolError``."""
        state = self.state
        if state is _OPEN:
            return self._next_frame()
        if state is _ERROR:
            raise ProtocolError("connection is in its error state")
        if state is _CLOSED:
            return Closed()

        if state is _AWAIT_COOKIE:
            return self._accept()
        return self._read_version()

    def send(self, header: Header, message: Message) -> bytes:
        """Return the bytes of one frame carrying ``message``.

        Encoding errors (an unpicklable argument) propagate to the caller and
        leave the connection usable, since nothing was written.
        """
        if self.state is not _OPEN and not (
            self.role is Role.INITIATOR and self.state is _AWAIT_VERSION
        ):
            raise ProtocolError(f"cannot send in state {self.state.value}")
        return encode_frame(header, self._codec.dumps(message))

    def send_failed(self) -> None:
        """The shell could not write: refuse further use."""
        self.state = WireState.ERROR

    def _accept(self) -> Event | NeedData:
        need = COOKIE_LENGTH + VERSION_LENGTH
        if len(self._raw) < COOKIE_LENGTH and self._eof:
            self.state = WireState.ERROR
            raise AuthenticationError("Cookie read failed. Connection closed by peer.")
        if len(self._raw) >= COOKIE_LENGTH and not hmac.compare_digest(
            bytes(self._raw[:COOKIE_LENGTH]), self._cookie
        ):
            self.state = WireState.ERROR
            raise AuthenticationError("Invalid connection credentials sent by remote.")
        if len(self._raw) < need:
            if self._eof:
                self.state = WireState.ERROR
                raise AuthenticationError(
                    "Version read failed. Connection closed by peer."
                )
            return NEED_DATA

        self.peer_version = (
            bytes(self._raw[COOKIE_LENGTH:need]).decode("ascii", "replace").rstrip()
        )
        self._open(bytes(self._raw[need:]))
        return Authenticated(self.peer_version, self._version)

    def _read_version(self) -> Event | NeedData:
        if len(self._raw) < VERSION_LENGTH:
            if self._eof:
                self.state = WireState.ERROR
                raise ProtocolError("Version read failed. Connection closed by peer.")
            return NEED_DATA

        self.peer_version = (
            bytes(self._raw[:VERSION_LENGTH]).decode("ascii", "replace").rstrip()
        )
        self._open(bytes(self._raw[VERSION_LENGTH:]))
        return Authenticated(self.peer_version, b"")

    def _open(self, rest: bytes) -> None:
        self.state = WireState.OPEN
        self._raw.clear()
        self._frames.feed(rest)

    def _next_frame(self) -> Event | NeedData:
        try:
            frame = self._frames.next_frame()
        except FramingError as exc:
            self.state = WireState.ERROR
            raise ProtocolError(str(exc)) from exc

        if frame is None:
            if self._eof:
                if self._frames.buffered:
                    self.state = WireState.ERROR
                    raise ProtocolError("stream ended inside a frame")
                self.state = WireState.CLOSED
                return Closed()
            return NEED_DATA

        try:
            message = self._codec.loads(frame.body)
        except Exception as exc:
            return Undecodable(frame.header, exc)
        if not isinstance(message, MESSAGE_TYPES):
            return Undecodable(
                frame.header,
                ProtocolError(
                    f"frame body is a {type(message).__name__}, not a message"
                ),
            )
        return Received(frame.header, message)
