"""Tests of ``RefTable.announce``: holder notices that may precede the value.

A reference can be passed on before any operation made its value on the
owner, so "add client" / "del client" notices can arrive first.  They are
counted apart (from ``{whence}``, with tombstones) and handed to the value
when the first operation makes it; bookkeeping alone is not a live value.
"""

from __future__ import annotations

import pytest

from ref.protocol.refs import RefTable
from spec.api import RRID

RR = RRID(1, 7)


def test_an_announced_holder_is_kept_until_the_value_is_made() -> None:
    table: RefTable[str] = RefTable()
    table.announce(RR, 3, added=True)
    assert RR not in table and len(table) == 0 and table.snapshot() == {}

    entry = table.get_or_create(RR, lambda: "v")
    assert entry.storage == "v"
    assert table.snapshot() == {RR: frozenset({1, 3})}


def test_a_drop_announced_before_its_add_cancels_it() -> None:
    table: RefTable[str] = RefTable()
    table.announce(RR, 3, added=False)
    table.announce(RR, 3, added=True)
    table.get_or_create(RR, lambda: "v")
    assert table.snapshot() == {RR: frozenset({1})}


def test_bookkeeping_ends_when_every_announced_holder_let_go() -> None:
    table: RefTable[str] = RefTable()
    table.announce(RR, 3, added=True)
    table.announce(RR, 1, added=False)
    table.announce(RR, 3, added=False)
    # Nothing is left over: a later first use starts from {whence} again.
    table.get_or_create(RR, lambda: "v")
    assert table.snapshot() == {RR: frozenset({1})}


def test_announce_on_a_made_value_adds_and_frees() -> None:
    table: RefTable[str] = RefTable()
    table.get_or_create(RR, lambda: "v")
    table.announce(RR, 4, added=True)
    assert table.clients(RR) == {1, 4}
    table.announce(RR, 1, added=False)
    table.announce(RR, 4, added=False)
    assert RR not in table


def test_a_departed_holder_leaves_the_bookkeeping_too() -> None:
    table: RefTable[str] = RefTable()
    table.announce(RR, 5, added=True)
    table.remove_pid(5)
    table.get_or_create(RR, lambda: "v")
    assert table.snapshot() == {RR: frozenset({1})}


def test_a_failing_make_keeps_the_announced_holders() -> None:
    table: RefTable[str] = RefTable()
    table.announce(RR, 3, added=True)

    def fail() -> str:
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError):
        table.get_or_create(RR, fail)
    assert RR not in table
    table.get_or_create(RR, lambda: "v")
    assert table.snapshot() == {RR: frozenset({1, 3})}


def test_plain_add_client_still_ignores_a_value_not_made() -> None:
    table: RefTable[str] = RefTable()
    table.add_client(RR, 3)
    table.get_or_create(RR, lambda: "v")
    assert table.snapshot() == {RR: frozenset({1})}
