"""The simulated network: streams that behave like trio's TCP streams.

These tests drive ``sim._network`` directly, inside ``sim.run`` (for the
virtual clock), with bare nodes and no runtime on top.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import sim
from sim._config import Constant, LinkConfig, LogNormal, NetworkConfig, Uniform
from sim._network import SIM_HOST, Network, SimStream
from sim._node import Node
from sim._trace import Trace


@asynccontextmanager
async def _network(config: NetworkConfig) -> AsyncIterator[Network]:
    net = Network(
        config=config,
        rng=random.Random(1),
        trace=Trace(enabled=True, scenario="test", seed=0),
        on_delivery=lambda: None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.pump)
        yield net
        nursery.cancel_scope.cancel()


async def _pair(net: Network, a: Node, b: Node) -> tuple[SimStream, SimStream]:
    """A connection from ``a`` to a fresh listener on ``b``: both ends."""
    send, receive = trio.open_memory_channel[SimStream](1)

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, SimStream)
        await send.send(stream)

    async with trio.open_nursery() as nursery:
        host, port = await net.listen(b, SIM_HOST, handler, nursery)
        mine = await net.connect(a, host, port)
        theirs = await receive.receive()
        nursery.cancel_scope.cancel()
    return mine, theirs


def _nodes(*pids: int) -> list[Node]:
    return [Node(i, f"n{pid}", 1000 + i, fixed_pid=pid) for i, pid in enumerate(pids)]


def _simulate(main: Callable[[], Awaitable[None]]) -> None:
    sim.run(main, seed=1)


def test_streams_pass_trios_own_stream_checks() -> None:
    async def main() -> None:
        # A small window makes the checks' write-until-broken loop short.
        latency = NetworkConfig(latency=Constant(0.001), window=4096)
        tight = NetworkConfig(latency=Constant(0.001), window=1)
        async with _network(latency) as net, _network(tight) as clogging:
            a, b = _nodes(1, 2)

            async def maker() -> tuple[SimStream, SimStream]:
                return await _pair(net, a, b)

            async def clogged() -> tuple[SimStream, SimStream]:
                # One unread byte each way fills a one-byte window.
                one, two = await _pair(clogging, a, b)
                await one.send_all(b"c")
                await two.send_all(b"c")
                return one, two

            await trio.testing.check_half_closeable_stream(maker, clogged)

    _simulate(main)


def test_each_direction_is_fifo_whatever_the_latencies() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Uniform(0.0, 1.0))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            sent = b"".join(b"%d," % i for i in range(200))
            for i in range(200):
                await one.send_all(b"%d," % i)
            got = b""
            while len(got) < len(sent):
                got += await two.receive_some()
            assert got == sent

    _simulate(main)


def test_a_chunk_arrives_after_exactly_the_drawn_latency() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.25))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            began = trio.current_time()
            await one.send_all(b"x")
            assert await two.receive_some() == b"x"
            assert trio.current_time() - began == pytest.approx(0.25)

    _simulate(main)


def test_bandwidth_serialises_chunks_one_after_another() -> None:
    async def main() -> None:
        config = NetworkConfig(latency=Constant(0.0), bandwidth=1000.0)
        async with _network(config) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            began = trio.current_time()
            await one.send_all(b"a" * 500)
            await one.send_all(b"b" * 500)
            assert await two.receive_some() == b"a" * 500
            assert trio.current_time() - began == pytest.approx(0.5)
            assert await two.receive_some() == b"b" * 500
            assert trio.current_time() - began == pytest.approx(1.0)

    _simulate(main)


def test_a_link_override_applies_to_its_pair_only() -> None:
    async def main() -> None:
        config = NetworkConfig(
            latency=Constant(0.01), links={(2, 1): LinkConfig(latency=Constant(2.0))}
        )
        async with _network(config) as net:
            master, slow, fast = _nodes(1, 2, 3)
            to_slow, at_slow = await _pair(net, master, slow)
            to_fast, at_fast = await _pair(net, master, fast)
            for sender, receiver, expected in (
                (to_slow, at_slow, 2.0),
                (to_fast, at_fast, 0.01),
            ):
                began = trio.current_time()
                await sender.send_all(b"x")
                await receiver.receive_some()
                assert trio.current_time() - began == pytest.approx(expected)

    _simulate(main)


def test_distributions_stay_in_their_bounds() -> None:
    rng = random.Random(3)
    assert Constant(0.5).draw(rng) == 0.5
    assert all(0.1 <= Uniform(0.1, 0.2).draw(rng) <= 0.2 for _ in range(1000))
    draws = [LogNormal(0.001, 2.0, cap=0.05).draw(rng) for _ in range(1000)]
    assert all(0 < d <= 0.05 for d in draws)
    assert max(draws) == 0.05
    with pytest.raises(ValueError, match="high"):
        Uniform(1.0, 0.5)
    with pytest.raises(ValueError, match="median"):
        LogNormal(0.0, 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        NetworkConfig(bandwidth=0.0)


def test_a_reset_breaks_both_ends() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            net.reset(one.conn, why="test")
            with pytest.raises(trio.BrokenResourceError):
                await two.receive_some()
            with pytest.raises(trio.BrokenResourceError):
                await one.send_all(b"x")

    _simulate(main)


def test_a_crashed_node_falls_silent_and_its_peer_sees_a_reset() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            a, b = _nodes(1, 2)
            one, two = await _pair(net, a, b)
            await one.send_all(b"before")
            assert await two.receive_some() == b"before"
            net.crash(a)
            # A dead node's cleanup may still try to write: it goes nowhere.
            await one.send_all(b"after")
            assert not any(b"after" in c[2].data for c in net._heap)
            with pytest.raises(trio.BrokenResourceError):
                await two.receive_some()
            with pytest.raises(trio.BrokenResourceError):
                await two.send_all(b"to the dead")

    _simulate(main)


def test_a_closed_end_gives_its_peer_end_of_file_after_the_data() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            await one.send_all(b"last words")
            await one.aclose()
            assert await two.receive_some() == b"last words"
            assert await two.receive_some() == b""

    _simulate(main)


def test_nothing_listening_means_connection_refused() -> None:
    async def main() -> None:
        async with _network(NetworkConfig()) as net:
            with pytest.raises(ConnectionRefusedError):
                await net.connect(_nodes(1)[0], SIM_HOST, 1)

    _simulate(main)


def test_a_partition_holds_data_and_releases_it_in_order() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Uniform(0.001, 0.1))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            net.add_partition(frozenset({2}))
            for i in range(20):
                await one.send_all(b"%d," % i)
            with trio.move_on_after(10.0) as waited:
                await two.receive_some()
            assert waited.cancelled_caught

            net.remove_partition(frozenset({2}))
            got = b""
            while len(got) < len(b"".join(b"%d," % i for i in range(20))):
                got += await two.receive_some()
            assert got == b"".join(b"%d," % i for i in range(20))

    _simulate(main)


def test_data_in_flight_when_a_partition_begins_keeps_its_place() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(1.0))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            await one.send_all(b"in flight,")
            await trio.sleep(0.5)
            net.add_partition(frozenset({2}))
            await one.send_all(b"written during,")
            await trio.sleep(1.0)
            net.remove_partition(frozenset({2}))
            await one.send_all(b"after")
            got = b""
            while len(got) < len(b"in flight,written during,after"):
                got += await two.receive_some()
            assert got == b"in flight,written during,after"

    _simulate(main)


def test_connecting_across_a_partition_times_out() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(connect_timeout=7.0)) as net:
            a, b = _nodes(1, 2)

            async def handler(stream: trio.abc.Stream) -> None:
                raise AssertionError("the connection should not reach b")

            async with trio.open_nursery() as nursery:
                host, port = await net.listen(b, SIM_HOST, handler, nursery)
                net.add_partition(frozenset({2}))
                began = trio.current_time()
                with pytest.raises(TimeoutError):
                    await net.connect(a, host, port)
                assert trio.current_time() - began == pytest.approx(7.0)
                nursery.cancel_scope.cancel()

    _simulate(main)


def test_a_writer_waits_while_the_window_is_full() -> None:
    async def main() -> None:
        config = NetworkConfig(latency=Constant(0.01), window=1000)
        async with _network(config) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            await one.send_all(b"x" * 1000)
            with trio.move_on_after(5.0) as blocked:
                await one.send_all(b"y")
            assert blocked.cancelled_caught
            assert await two.receive_some() == b"x" * 1000
            with trio.fail_after(1.0):
                await one.send_all(b"y")

    _simulate(main)


def test_the_pump_delivers_when_the_run_loop_hook_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under another clock the hook is a shortcut: chunks arrive all the same."""
    monkeypatch.setattr(Network, "on_wakeup", _no_hook)

    async def main() -> None:
        async with _network(NetworkConfig(latency=Uniform(0.0, 0.01))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            began = trio.current_time()
            sent = b"".join(b"%d," % i for i in range(50))
            for i in range(50):
                await one.send_all(b"%d," % i)
            got = b""
            while len(got) < len(sent):
                got += await two.receive_some()
            assert got == sent
            assert net.deliveries == 50
            assert trio.current_time() - began <= 0.01 + 1e-9

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_chunks_due_at_once_arrive_under_the_simulators_clock() -> None:
    """Zero latency: nothing for the clock to jump to; the pump delivers."""

    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.0))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            began = trio.current_time()
            sent = b"".join(b"%d," % i for i in range(50))
            for i in range(50):
                await one.send_all(b"%d," % i)
            got = b""
            while len(got) < len(sent):
                got += await two.receive_some()
            assert got == sent
            assert net.deliveries == 50
            assert trio.current_time() == began

    _simulate(main)


def _no_hook(self: object, context: object, hook: object) -> None:
    pass


def test_an_error_while_delivering_from_the_hook_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trio would drop a failing instrument quietly; the pump raises instead."""

    def broken(self: Network, chunk: object) -> None:
        raise RuntimeError("delivery failed")

    monkeypatch.setattr(Network, "_deliver", broken)

    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            await one.send_all(b"x")
            await two.receive_some()

    with pytest.raises(BaseExceptionGroup) as caught:
        _simulate(main)
    assert caught.group_contains(RuntimeError, match="delivery failed")


# ``send_all_shielded`` must do what ``send_all`` in a shielded cancel scope
# with the deadline does (``ref._seams.ShieldedSend``); the runtime writes
# every message through it.


def test_a_shielded_write_finishes_although_its_caller_is_cancelled() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            with trio.CancelScope() as caller:
                caller.cancel()
                written = await one.send_all_shielded(b"x", trio.current_time() + 5)
                finished = True
                await trio.lowlevel.checkpoint()  # the cancellation lands here
            assert written and finished and caller.cancelled_caught
            assert await two.receive_some() == b"x"

    _simulate(main)


def test_a_shielded_write_gives_up_at_its_deadline_when_the_window_stays_full() -> None:
    async def main() -> None:
        config = NetworkConfig(latency=Constant(0.01), window=1000)
        async with _network(config) as net:
            one, two = await _pair(net, *_nodes(1, 2))
            await one.send_all(b"x" * 1000)
            began = trio.current_time()
            assert not await one.send_all_shielded(b"y", began + 5)
            assert trio.current_time() == pytest.approx(began + 5)
            assert await two.receive_some() == b"x" * 1000
            with trio.move_on_after(1.0):
                await two.receive_some()
                raise AssertionError("the abandoned write arrived")

    _simulate(main)


@pytest.mark.parametrize(("resume_after", "written"), [(2.0, True), (9.0, False)])
def test_a_shielded_write_by_a_hung_node_waits_for_its_resume_or_deadline(
    resume_after: float, written: bool
) -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            a, b = _nodes(1, 2)
            one, two = await _pair(net, a, b)
            a.hang()

            async def resume() -> None:
                await trio.sleep(resume_after)
                a.resume()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                began = trio.current_time()
                assert await one.send_all_shielded(b"z", began + 5) is written
                assert trio.current_time() == pytest.approx(
                    began + min(resume_after, 5)
                )
            with trio.move_on_after(1.0):
                assert await two.receive_some() == b"z"
                assert written, "the abandoned write arrived"

    _simulate(main)


class _HangsOnSecondLook(Node):
    """A node that is hung from the second time anyone checks."""

    looks = 0

    @property  # type: ignore[override]  # a property over Node's attribute
    def hung(self) -> bool:
        self.looks += 1
        return self.looks > 1 and not self.resumed_once

    @hung.setter
    def hung(self, value: bool) -> None:
        self.resumed_once = not value and self.looks > 0


def test_a_hang_that_begins_during_the_writes_schedule_point_is_waited_out() -> None:
    async def main() -> None:
        async with _network(NetworkConfig(latency=Constant(0.01))) as net:
            a = _HangsOnSecondLook(0, "n1", 1000, fixed_pid=1)
            (b,) = _nodes(2)
            one, two = await _pair(net, a, b)
            a.looks = 0

            async def resume() -> None:
                await trio.sleep(3.0)
                a.resume()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                began = trio.current_time()
                assert await one.send_all_shielded(b"w", began + 5)
                assert trio.current_time() == pytest.approx(began + 3)
            assert await two.receive_some() == b"w"

    _simulate(main)
