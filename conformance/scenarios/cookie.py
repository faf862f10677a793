"""The cluster cookie and ``worker_id_from_socket``.

``cluster_cookie()`` is a random 16-character alphanumeric string made when
the cluster is; ``cluster_cookie(c)`` sets it (before workers are added)
and returns it padded with spaces to 16 characters; a non-ASCII or longer
cookie is refused.  Workers added afterwards authenticate with the new
cookie.  ``worker_id_from_socket`` answers -1 for a stream that is not one
of the caller's links (a link's own stream is checked by pytest, since a
scenario cannot reach one).
"""

from __future__ import annotations

import string

import trio.testing

from conformance.registry import scenario
from spec.api import COOKIE_LENGTH, DistributedAPI

from ._probes import PATIENCE, within

_ALPHANUMERIC = frozenset(string.ascii_letters + string.digits)


@scenario("cluster_cookie.random-default")
async def the_default_cookie_is_sixteen_random_alphanumerics(
    d: DistributedAPI,
) -> None:
    cookie = d.cluster_cookie()
    assert isinstance(cookie, str) and len(cookie) == COOKIE_LENGTH, (
        f"the default cookie {cookie!r} is not {COOKIE_LENGTH} characters"
    )
    assert set(cookie) <= _ALPHANUMERIC, f"the default cookie {cookie!r} is not alnum"
    assert d.cluster_cookie() == cookie, "cluster_cookie() changed between calls"
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    assert d.cluster_cookie() == cookie, "cluster_cookie() changed after addprocs"
    theirs = await d.remotecall_fetch(d.cluster_cookie, pid)
    assert theirs == cookie, f"worker {pid} holds {theirs!r}, the master {cookie!r}"


@scenario("cluster_cookie.set-pads-and-returns")
async def a_set_cookie_is_padded_returned_and_used_by_new_workers(
    d: DistributedAPI,
) -> None:
    for given in ("", "short", "exactly16chars!!"):
        padded = given.ljust(COOKIE_LENGTH)
        returned = d.cluster_cookie(given)
        assert returned == padded, f"cluster_cookie({given!r}) returned {returned!r}"
        assert d.cluster_cookie() == padded, (
            f"after cluster_cookie({given!r}), cluster_cookie() is "
            f"{d.cluster_cookie()!r}"
        )
    d.cluster_cookie("secret")
    with within(PATIENCE, "addprocs(2) with the cookie 'secret'"):
        pids = await d.addprocs(2)
    for pid in pids:
        theirs = await d.remotecall_fetch(d.cluster_cookie, pid)
        assert theirs == "secret".ljust(COOKIE_LENGTH), (
            f"worker {pid} holds the cookie {theirs!r}"
        )
    # The workers reach each other with it too.
    low, high = pids
    assert await d.remotecall_fetch(d.remotecall_fetch, high, d.myid, low) == low


@scenario("cluster_cookie.invalid-rejected")
async def non_ascii_or_long_cookies_are_refused(d: DistributedAPI) -> None:
    before = d.cluster_cookie()
    for wrong in ("x" * (COOKIE_LENGTH + 1), "caf\u00e9", "\u2603"):
        try:
            d.cluster_cookie(wrong)
        except ValueError:
            pass
        else:
            raise AssertionError(f"cluster_cookie({wrong!r}) was accepted")
        assert d.cluster_cookie() == before, (
            f"a refused cluster_cookie({wrong!r}) changed the cookie to "
            f"{d.cluster_cookie()!r}"
        )


@scenario("worker_id_from_socket.returns-peer-pid")
async def a_stream_of_no_link_belongs_to_no_worker(d: DistributedAPI) -> None:
    left, right = trio.testing.memory_stream_pair()
    async with left, right:
        assert d.worker_id_from_socket(left) == -1
        assert d.worker_id_from_socket(right) == -1
    assert d.worker_id_from_socket(object()) == -1
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    assert d.worker_id_from_socket(left) == -1, "a closed stray stream found a pid"
    answer = await d.remotecall_fetch(d.worker_id_from_socket, pid, None)
    assert answer == -1, f"worker {pid} says None belongs to pid {answer}"
