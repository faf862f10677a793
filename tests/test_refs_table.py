"""Tests of ``ref.protocol.refs``: the owner's table of values and client sets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ref.protocol.refs import RefTable
from spec.api import RRID


def test_entry_is_created_lazily_with_its_creator_as_client() -> None:
    table: RefTable[str] = RefTable()
    rrid = RRID(3, 1)
    assert rrid not in table
    assert table.get(rrid) is None
    assert len(table) == 0

    entry = table.get_or_create(rrid, lambda: "storage")
    assert entry.storage == "storage"
    assert entry.clients == {3}
    assert rrid in table
    assert table.clients(rrid) == frozenset({3})
    assert len(table) == 1


def test_get_or_create_returns_the_existing_entry_without_making_one() -> None:
    table: RefTable[list[int]] = RefTable()
    made: list[int] = []

    def make() -> list[int]:
        made.append(1)
        return made

    first = table.get_or_create(RRID(1, 1), make)
    second = table.get_or_create(RRID(1, 1), make)
    assert second is first
    assert made == [1]


def test_entry_is_freed_when_its_last_client_leaves() -> None:
    table: RefTable[str] = RefTable()
    rrid = RRID(1, 4)
    table.get_or_create(rrid, lambda: "v")
    table.add_client(rrid, 2)
    assert table.clients(rrid) == {1, 2}

    assert table.del_client(rrid, 1) is False
    assert rrid in table
    assert table.del_client(rrid, 2) is True
    assert rrid not in table
    assert table.clients(rrid) == frozenset()
    assert table.del_client(rrid, 2) is False


def test_deleting_a_non_client_keeps_the_entry() -> None:
    table: RefTable[str] = RefTable()
    rrid = RRID(1, 4)
    table.get_or_create(rrid, lambda: "v")
    assert table.del_client(rrid, 9) is False
    assert table.clients(rrid) == {1}


def test_a_del_that_overtook_its_add_cancels_it() -> None:
    """The notices travel on different links, so a del may arrive first."""
    table: RefTable[str] = RefTable()
    rrid = RRID(1, 4)
    table.get_or_create(rrid, lambda: "v")
    assert table.del_client(rrid, 3) is False
    table.add_client(rrid, 3)
    assert table.clients(rrid) == {1}
    table.add_client(rrid, 3)
    assert table.clients(rrid) == {1, 3}


def test_remove_pid_clears_its_tombstones() -> None:
    table: RefTable[str] = RefTable()
    rrid = RRID(1, 4)
    table.get_or_create(rrid, lambda: "v")
    table.del_client(rrid, 3)
    table.remove_pid(3)
    table.add_client(rrid, 3)
    assert table.clients(rrid) == {1, 3}


def test_snapshot_lists_live_values_and_clients() -> None:
    table: RefTable[str] = RefTable()
    table.get_or_create(RRID(2, 1), lambda: "b")
    table.get_or_create(RRID(1, 1), lambda: "a")
    table.add_client(RRID(1, 1), 4)
    assert table.snapshot() == {
        RRID(1, 1): frozenset({1, 4}),
        RRID(2, 1): frozenset({2}),
    }


def test_adding_a_client_to_a_freed_value_does_not_revive_it() -> None:
    table: RefTable[str] = RefTable()
    rrid = RRID(2, 1)
    table.get_or_create(rrid, lambda: "v")
    table.del_client(rrid, 2)
    table.add_client(rrid, 3)
    assert rrid not in table


def test_remove_pid_frees_only_values_it_alone_held() -> None:
    table: RefTable[str] = RefTable()
    alone, shared, other = RRID(5, 1), RRID(5, 2), RRID(6, 1)
    table.get_or_create(alone, lambda: "a")
    table.get_or_create(shared, lambda: "s")
    table.add_client(shared, 1)
    table.get_or_create(other, lambda: "o")

    assert table.remove_pid(5) == [alone]
    assert table.ids() == [shared, other]
    assert table.clients(shared) == {1}
    assert table.clients(other) == {6}
    assert table.remove_pid(5) == []


def test_ids_are_sorted() -> None:
    table: RefTable[int] = RefTable()
    for rrid in (RRID(3, 2), RRID(1, 5), RRID(3, 1)):
        table.get_or_create(rrid, lambda: 0)
    assert table.ids() == [RRID(1, 5), RRID(3, 1), RRID(3, 2)]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "add", "del", "remove_pid"]),
        st.sampled_from([RRID(1, 1), RRID(2, 1), RRID(2, 2)]),
        st.integers(1, 4),
    ),
    max_size=60,
)


@settings(deadline=None)  # pure CPU; timing varies under load
@given(OPS)
def test_table_matches_a_model_of_client_sets(
    ops: list[tuple[str, RRID, int]],
) -> None:
    """Random operations agree with a model of client sets and tombstones."""
    table: RefTable[RRID] = RefTable()
    clients: dict[RRID, set[int]] = {}
    tombs: dict[RRID, set[int]] = {}
    for op, rrid, pid in ops:
        if op == "create":
            table.get_or_create(rrid, lambda r=rrid: r)
            if rrid not in clients:
                clients[rrid], tombs[rrid] = {rrid.whence}, set()
        elif op == "add":
            table.add_client(rrid, pid)
            if rrid in clients:
                if pid in tombs[rrid]:
                    tombs[rrid].discard(pid)
                else:
                    clients[rrid].add(pid)
        elif op == "del":
            freed = table.del_client(rrid, pid)
            assert freed == (rrid in clients and clients[rrid] == {pid})
            if rrid in clients:
                if pid not in clients[rrid]:
                    tombs[rrid].add(pid)
                elif clients[rrid] == {pid}:
                    del clients[rrid], tombs[rrid]
                else:
                    clients[rrid].discard(pid)
        else:
            freed_ids = table.remove_pid(pid)
            assert sorted(freed_ids) == sorted(
                r for r, c in clients.items() if c == {pid}
            )
            for r in list(clients):
                tombs[r].discard(pid)
                clients[r].discard(pid)
                if not clients[r]:
                    del clients[r], tombs[r]
        assert table.ids() == sorted(clients)
        assert table.snapshot() == {r: frozenset(c) for r, c in sorted(clients.items())}
        for r in clients:
            entry = table.get(r)
            assert entry is not None and entry.storage == r
