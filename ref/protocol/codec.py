"""How message bodies become bytes: an injected codec, cloudpickle by default.

The core never pickles directly: it asks a ``Codec``.  The default one uses
cloudpickle, so functions defined in ``__main__`` or interactively travel by
value, and plain ``pickle`` to load.  Loading runs code from the peer, which
is why the wire layer only ever decodes after the cookie handshake passed.
"""

from __future__ import annotations

import pickle
from typing import Protocol

import cloudpickle  # type: ignore[import-untyped]  # ships no type information


class Codec(Protocol):
    """Turns message objects into bytes and back."""

    def dumps(self, obj: object) -> bytes: ...

    def loads(self, data: bytes) -> object: ...


class CloudpickleCodec:
    """The default codec: cloudpickle to encode, pickle to decode."""

    def dumps(self, obj: object) -> bytes:
        data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return data

    def loads(self, data: bytes) -> object:
        return pickle.loads(data)
