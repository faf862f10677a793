"""The codec simulated processes use: the real one, watched for the trace.

Values cross simulated process boundaries through the real codec
(cloudpickle), exactly as between OS processes.  This wrapper adds one
thing: after encoding a message it leaves a ``MessageNote`` on its node
saying what the message was, so the trace can name what each chunk on the
simulated wire carries without decoding it again.
"""

from __future__ import annotations

from ref.protocol.codec import CloudpickleCodec, Codec
from ref.protocol.messages import ResultMsg
from spec.api import RemoteException

from ._node import MessageNote, Node


class TracingCodec:
    """Encodes with ``inner`` and notes each message on ``node``."""

    def __init__(
        self, node: Node, *, enabled: bool, inner: Codec | None = None
    ) -> None:
        self._node = node
        self._enabled = enabled
        self._inner: Codec = inner or CloudpickleCodec()

    def dumps(self, obj: object) -> bytes:
        data = self._inner.dumps(obj)
        if self._enabled:
            self._node.pending_note = describe(obj, len(data))
        return data

    def loads(self, data: bytes) -> object:
        return self._inner.loads(data)


def describe(message: object, body_len: int) -> MessageNote:
    """A note naming ``message``'s type, function, call mode and outcome."""
    function = getattr(message, "f", None)
    mode = getattr(message, "mode", None)
    outcome = None
    if isinstance(message, ResultMsg):
        outcome = "fail" if isinstance(message.value, RemoteException) else "ok"
    return MessageNote(
        kind=type(message).__name__,
        function=None if function is None else function_name(function),
        mode=mode if isinstance(mode, str) else None,
        outcome=outcome,
        body_len=body_len,
    )


def function_name(function: object) -> str:
    """``module.qualname`` of a callable; never a repr with an address."""
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}"
