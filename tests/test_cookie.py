"""The cluster cookie on ``ref``: its default, its padding, when it may change.

The conformance scenarios (``conformance/scenarios/cookie.py``) cover the
contract; these tests add what is particular to distref: each cluster draws
its own cookie, the cookie cannot change once workers are connected (they
hold the old one), and ``pad_cookie``'s checks.
"""

from __future__ import annotations

import string

import pytest
import trio
from conftest import OpenTestCluster

import ref
from ref._transports import pad_cookie
from spec.api import COOKIE_LENGTH


async def test_each_cluster_draws_its_own_random_cookie() -> None:
    seen = set()
    for _ in range(3):
        async with ref.open_cluster():
            cookie = ref.cluster_cookie()
            assert len(cookie) == COOKIE_LENGTH
            assert set(cookie) <= set(string.ascii_letters + string.digits)
            seen.add(cookie)
    assert len(seen) == 3


async def test_the_cookie_is_fixed_once_workers_are_connected(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster():
        assert ref.cluster_cookie("before") == "before".ljust(COOKIE_LENGTH)
        [pid] = await ref.addprocs(1)
        with pytest.raises(RuntimeError, match="before addprocs"):
            ref.cluster_cookie("after")
        assert ref.cluster_cookie() == "before".ljust(COOKIE_LENGTH)
        assert (
            await ref.remotecall_fetch(ref.cluster_cookie, pid) == ref.cluster_cookie()
        )
        await ref.rmprocs(pid)
        with trio.fail_after(10):
            while ref.nprocs() > 1:
                await trio.sleep(0.01)
        # With every worker gone it may change again.
        assert ref.cluster_cookie("after") == "after".ljust(COOKIE_LENGTH)


def test_pad_cookie_pads_to_sixteen_and_refuses_the_rest() -> None:
    assert pad_cookie("") == " " * COOKIE_LENGTH
    assert pad_cookie("abc") == "abc".ljust(COOKIE_LENGTH)
    assert pad_cookie("x" * COOKIE_LENGTH) == "x" * COOKIE_LENGTH
    for wrong in ("x" * (COOKIE_LENGTH + 1), "caf\u00e9", b"bytes"):
        with pytest.raises(ValueError, match="cookie="):
            pad_cookie(wrong)  # type: ignore[arg-type]  # bytes is the mistake


async def test_a_cookie_that_is_not_a_str_is_a_type_error_naming_it() -> None:
    async with ref.open_cluster():
        with pytest.raises(TypeError, match=r"cluster_cookie: cookie=5 is not a str"):
            ref.cluster_cookie(5)  # type: ignore[arg-type]  # the point
