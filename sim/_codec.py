"""The codec simulated processes use: the real one, watched for the trace.

Values cross simulated process boundaries through the real codec
(cloudpickle), exactly as between OS processes.  This wrapper adds one
thing: after encoding a message it leaves a ``MessageNote`` on its node
saying what the message was, so the trace can name what each chunk on the
simulated wire carries without decoding it again.

It also takes a short cut that changes no byte: a call or result made only
of plain data (None, numbers, strings, bytes, in tuples, lists and dicts)
and functions that cloudpickle itself would pickle by reference is encoded
by the standard pickler, which is what cloudpickle ends up running for such
a message anyway, minus its per-object Python hook.  Anything else (a
lambda, a function from ``__main__``, a remote reference, an instance of a
user class) goes through cloudpickle as before.
"""

from __future__ import annotations

import pickle
import types
from collections.abc import Callable, Iterable
from typing import cast

import cloudpickle  # type: ignore[import-untyped]  # ships no type information

from ref.protocol.codec import CloudpickleCodec, Codec
from ref.protocol.messages import CallMsg, CallWaitMsg, RemoteDoMsg, ResultMsg
from spec.api import RemoteException

from ._node import MessageNote, Node

# cloudpickle's own test for "pickled by reference" (importable, not from
# __main__, not registered to travel by value).  Private to cloudpickle: if
# a release drops it, the short cut is off and everything goes through
# cloudpickle.
_by_reference: Callable[[object], bool] | None = getattr(
    getattr(cloudpickle, "cloudpickle", None), "_should_pickle_by_reference", None
)

_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
_CALLS = (CallMsg, CallWaitMsg, RemoteDoMsg)
#: Objects a message may hold for the short cut; more go through cloudpickle
#: (its C loops beat a Python walk over a big argument).
_MAX_OBJECTS = 32


class TracingCodec:
    """Encodes with ``inner`` and notes each message on ``node``."""

    def __init__(
        self, node: Node, *, enabled: bool, inner: Codec | None = None
    ) -> None:
        self._node = node
        self._enabled = enabled
        self._inner: Codec = inner or CloudpickleCodec()
        self._short_cut = inner is None and _by_reference is not None

    def dumps(self, obj: object) -> bytes:
        if self._short_cut and _plain_message(obj):
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            data = self._inner.dumps(obj)
        if self._enabled:
            self._node.pending_note = describe(obj, len(data))
        return data

    def loads(self, data: bytes) -> object:
        return self._inner.loads(data)


def _plain_message(message: object) -> bool:
    """Whether cloudpickle would encode ``message`` as the plain pickler does."""
    if isinstance(message, ResultMsg):
        return _plain([message.value]) >= 0
    if isinstance(message, _CALLS):
        f = message.f
        if type(f) is not types.FunctionType or _by_reference is None:
            return False
        return _by_reference(f) and _plain([message.args, message.kwargs]) >= 0
    return False


def _plain(items: Iterable[object], budget: int = _MAX_OBJECTS) -> int:
    """What is left of ``budget`` after walking ``items``; -1 if not plain."""
    for item in items:
        budget -= 1
        if budget < 0:
            return -1
        kind = type(item)
        if kind in _ATOMS:
            continue
        if kind is tuple or kind is list:
            budget = _plain(cast("Iterable[object]", item), budget)
        elif kind is dict:
            budget = _plain(cast("dict[object, object]", item).items(), budget)
        else:
            return -1
        if budget < 0:
            return -1
    return budget


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
