"""How message bodies become bytes: an injected codec, cloudpickle by default.

The core never pickles directly: it asks a ``Codec``.  The default one uses
cloudpickle, so functions defined in ``__main__`` or interactively travel by
value, and plain ``pickle`` to load.  Loading runs code from the peer, which
is why the wire layer only ever decodes after the cookie handshake passed.

Globals of ``__main__`` (field report BR-29, Julia's rule for globals in
``Main``): a function that travels by value because it was defined in the
sender's ``__main__`` is rebuilt on the receiver *inside the receiver's*
``__main__`` namespace.  The globals it uses that the sender defines travel
with it (cloudpickle carries exactly those) and are assigned there, so they
redefine the receiver's globals of the same names; a global the sender does
not define is looked up in the receiver's ``__main__`` when the function
runs.  Plain cloudpickle would instead give each shipped function a
private globals dict, where such a name is simply undefined.  This covers
the called function and every by-value ``__main__`` function it refers to.
"""

from __future__ import annotations

import io
import pickle
import sys
from types import FunctionType
from typing import Any, Protocol

import cloudpickle  # type: ignore[import-untyped]  # ships no type information


class Codec(Protocol):
    """Turns message objects into bytes and back."""

    def dumps(self, obj: object) -> bytes: ...

    def loads(self, data: bytes) -> object: ...


def receiver_main_globals() -> dict[str, Any]:
    """On unpickling: the namespace of the receiving process's ``__main__``.

    Under the simulator ``sys.modules["__main__"]`` stands for the calling
    simulated process's own module (see ``sim/_mains.py``).
    """
    return vars(sys.modules["__main__"])


class _ReceiverMain:
    """Pickles as "the receiver's ``__main__`` namespace"."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (receiver_main_globals, ())


_RECEIVER_MAIN = _ReceiverMain()


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # untyped base
    """cloudpickle, with ``__main__`` functions bound to the receiver's."""

    def _function_getnewargs(self, func: FunctionType) -> tuple[Any, ...]:
        # cloudpickle rebuilds a function from (code, globals, name,
        # defaults, closure) and then updates those globals with the values
        # it carried; swapping in the receiver's __main__ dict makes that
        # update the redefinition the rule asks for.
        code, base, name, defaults, closure = super()._function_getnewargs(func)
        if func.__globals__.get("__name__") == "__main__":
            base = _RECEIVER_MAIN
        return code, base, name, defaults, closure


class CloudpickleCodec:
    """The default codec: cloudpickle to encode, pickle to decode."""

    def dumps(self, obj: object) -> bytes:
        with io.BytesIO() as file:
            _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
            return file.getvalue()

    def loads(self, data: bytes) -> object:
        return pickle.loads(data)
