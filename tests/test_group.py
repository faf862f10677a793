"""Tests of ``ref.protocol.group``: the process table and Julia's counting rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ref.protocol.group import MASTER, Peer, PeerState, ProcessGroup
from spec.api import RRID, NoSuchProcessError, ProcessExitedException


def master_with(*states: PeerState) -> ProcessGroup:
    """A master whose workers 2, 3, ... are in the given states."""
    group = ProcessGroup(myid=MASTER)
    for state in states:
        pid = group.allocate_pid()
        group.add_peer(Peer(pid, "127.0.0.1", 9000 + pid, state))
    return group


def test_master_without_workers_counts_itself_as_the_worker() -> None:
    group = ProcessGroup(myid=MASTER)
    assert group.is_master
    assert group.procs() == [1]
    assert group.workers() == [1]
    assert group.nprocs() == 1
    assert group.nworkers() == 1


def test_master_with_one_worker() -> None:
    group = master_with(PeerState.CONNECTED)
    assert group.procs() == [1, 2]
    assert group.workers() == [2]
    assert group.nprocs() == 2
    assert group.nworkers() == 1


def test_master_with_two_workers() -> None:
    group = master_with(PeerState.CONNECTED, PeerState.CONNECTED)
    assert group.procs() == [1, 2, 3]
    assert group.workers() == [2, 3]
    assert group.nprocs() == 3
    assert group.nworkers() == 2


def test_master_counts_only_connected_workers() -> None:
    group = master_with(PeerState.CREATED, PeerState.CONNECTED, PeerState.TERMINATING)
    assert group.procs() == [1, 3]
    assert group.workers() == [3]
    assert group.nworkers() == 1


def test_master_with_only_unconnected_workers_looks_empty() -> None:
    group = master_with(PeerState.CREATED, PeerState.TERMINATING)
    assert group.procs() == [1]
    assert group.workers() == [1]
    assert group.nworkers() == 1


def worker_group(*, lazy: bool, topology: str = "all_to_all") -> ProcessGroup:
    """Worker 3 that is connected to the master and knows a stub for 2."""
    group = ProcessGroup(myid=3, topology=topology, lazy=lazy)
    group.add_peer(Peer(MASTER, "", 0, PeerState.CONNECTED))
    group.add_peer(Peer(2, "127.0.0.1", 9002, PeerState.CREATED))
    return group


def test_lazy_worker_counts_stubs() -> None:
    group = worker_group(lazy=True)
    assert not group.is_master
    assert group.procs() == [1, 2, 3]
    assert group.workers() == [2, 3]
    assert group.nworkers() == 2


def test_eager_all_to_all_worker_counts_only_connected_peers() -> None:
    group = worker_group(lazy=False)
    assert group.procs() == [1, 3]
    assert group.workers() == [3]


def test_non_all_to_all_worker_counts_every_known_peer() -> None:
    group = worker_group(lazy=False, topology="master_worker")
    assert group.procs() == [1, 2, 3]


def test_procs_are_sorted_whatever_the_registration_order() -> None:
    group = ProcessGroup(myid=MASTER)
    for pid in (5, 3, 4):
        group.add_peer(Peer(pid, "h", pid, PeerState.CONNECTED))
    assert group.procs() == [1, 3, 4, 5]
    assert [p.pid for p in group.peers()] == [5, 3, 4]


def test_pid_allocation_starts_at_two_and_never_reuses() -> None:
    group = ProcessGroup(myid=MASTER)
    first = [group.allocate_pid() for _ in range(3)]
    assert first == [2, 3, 4]
    for pid in first:
        group.add_peer(Peer(pid, "h", 1, PeerState.CONNECTED))
        group.remove(pid)
    assert group.allocate_pid() == 5


@settings(deadline=None)  # pure CPU; timing varies under load
@given(st.lists(st.booleans(), max_size=50))
def test_allocated_pids_are_strictly_increasing(removals: list[bool]) -> None:
    group = ProcessGroup(myid=MASTER)
    seen: list[int] = []
    for remove in removals:
        pid = group.allocate_pid()
        group.add_peer(Peer(pid, "h", 1, PeerState.CONNECTED))
        if remove:
            group.remove(pid)
        seen.append(pid)
    assert seen == sorted(set(seen))
    assert all(pid >= 2 for pid in seen)


def test_rrids_carry_the_creator_and_count_up() -> None:
    group = ProcessGroup(myid=3)
    assert [group.next_rrid() for _ in range(3)] == [
        RRID(3, 1),
        RRID(3, 2),
        RRID(3, 3),
    ]


def test_add_peer_keeps_the_first_record() -> None:
    group = ProcessGroup(myid=MASTER)
    first = group.add_peer(Peer(2, "a", 1))
    again = group.add_peer(Peer(2, "b", 2))
    assert again is first
    assert group.peer(2).host == "a"


def test_lookup_of_a_departed_pid_raises_process_exited() -> None:
    group = master_with(PeerState.CONNECTED)
    removed = group.remove(2)
    assert removed is not None and removed.pid == 2
    assert group.has_left(2)
    assert not group.is_known(2)
    with pytest.raises(ProcessExitedException) as info:
        group.peer(2)
    assert info.value.worker_id == 2
    assert group.procs() == [1]


def test_departed_pid_on_a_worker_is_not_recreated_as_a_stub() -> None:
    group = worker_group(lazy=True)
    group.remove(2)
    with pytest.raises(ProcessExitedException):
        group.peer(2)
    assert group.procs() == [1, 3]


def test_removing_an_unknown_pid_still_marks_it_departed() -> None:
    group = ProcessGroup(myid=MASTER)
    assert group.remove(9) is None
    with pytest.raises(ProcessExitedException):
        group.peer(9)


def test_unknown_pid_on_the_master_is_no_such_process() -> None:
    group = master_with(PeerState.CONNECTED)
    with pytest.raises(NoSuchProcessError, match="no process with id 7 exists") as info:
        group.peer(7)
    assert info.value.pid == 7
    assert info.value.known == tuple(group.procs())
    assert not group.is_known(7)


def test_unknown_pid_on_a_worker_becomes_a_stub() -> None:
    group = worker_group(lazy=True)
    stub = group.peer(5)
    assert (stub.pid, stub.host, stub.port, stub.state) == (
        5,
        "",
        0,
        PeerState.CREATED,
    )
    assert group.is_known(5)
    assert group.peer(5) is stub
    assert group.procs() == [1, 2, 3, 5]


def test_a_worker_never_invents_a_master() -> None:
    group = ProcessGroup(myid=4)
    with pytest.raises(NoSuchProcessError):
        group.peer(MASTER)
