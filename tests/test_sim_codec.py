"""The simulator's codec: its short cut for plain messages changes no byte."""

from __future__ import annotations

import json
import pickle

import cloudpickle  # type: ignore[import-untyped]  # ships no type information
import pytest

import ref
from ref.protocol.messages import CallMsg, Message, ResultMsg
from sim._codec import TracingCodec, _plain_message
from sim._node import Node
from spec.api import RRID


def _codec() -> TracingCodec:
    return TracingCodec(Node(0, "n", 1000, fixed_pid=1), enabled=False)


@pytest.mark.parametrize(
    "message",
    [
        CallMsg(ref.myid, (), {}, "call_fetch"),
        CallMsg(json.dumps, (1, "a", [1.5, None], {"k": (b"x",)}), {"z": 3}),
        ResultMsg(3),
        ResultMsg([1, 2, (3, "x" * 300)]),
    ],
)
def test_a_plain_message_encodes_as_cloudpickle_would(message: Message) -> None:
    assert _plain_message(message)
    expected = cloudpickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    assert _codec().dumps(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        CallMsg(lambda: 1, (), {}),
        CallMsg(ref.myid, (lambda: 2,), {}),
        CallMsg(ref.myid, (list(range(100)),), {}),
        ResultMsg(RRID(1, 2)),
        ResultMsg(ValueError("x")),
    ],
)
def test_anything_else_goes_through_cloudpickle(message: Message) -> None:
    assert not _plain_message(message)
    decoded = _codec().loads(_codec().dumps(message))
    assert type(decoded) is type(message)


def test_a_module_registered_to_travel_by_value_is_not_short_cut() -> None:
    message = CallMsg(json.dumps, (), {})
    assert _plain_message(message)
    cloudpickle.register_pickle_by_value(json)
    try:
        assert not _plain_message(message)
        copied = _codec().loads(_codec().dumps(message))
        assert isinstance(copied, CallMsg)
        assert copied.f is not json.dumps
    finally:
        cloudpickle.unregister_pickle_by_value(json)
