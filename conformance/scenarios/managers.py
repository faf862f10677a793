"""Cluster managers: the launch/manage contract, WorkerConfig, addprocs forms.

Most scenarios bring a manager of their own.  It starts no process itself:
it asks the backend's ``LocalManager`` to launch workers (so the same
scenario runs on real and simulated workers) and then reports, withholds,
reorders or spoils the resulting ``WorkerConfig`` s to stage what a
manager may do: report workers one at a time, forget to notify, raise, or
hand over a worker whose output stream says something other than an
address line.  Such a stream is a trio memory stream the scenario writes.

What needs a real ssh server or Slurm, or process facts, is checked by the
repository's own tests (see the catalogue's ``tests`` entries).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio
import trio.testing

from conformance.registry import scenario
from spec.api import (
    ClusterManagerAPI,
    DistributedAPI,
    LaunchError,
    NotMasterError,
    RemoteException,
    WorkerConfigAPI,
)

from ._probes import PATIENCE, eventually, only_listening_address, tcp_sockets, within

#: The fields every WorkerConfig has, all None by default (Julia's).
WORKER_CONFIG_FIELDS = (
    "io",
    "host",
    "port",
    "count",
    "exename",
    "exeflags",
    "userdata",
    "tunnel",
    "multiplex",
    "forward",
    "bind_addr",
    "sshflags",
    "max_parallel",
    "connect_at",
    "process",
    "ospid",
    "environ",
    "ident",
    "connect_idents",
    "enable_threaded_blas",
)

Notify = Callable[[], None]


async def one_config(d: DistributedAPI, params: Mapping[str, Any]) -> WorkerConfigAPI:
    """A worker started by the backend's LocalManager, not yet reported."""
    staged: list[Any] = []
    await d.LocalManager(1).launch(params, staged, lambda: None)
    [config] = staged
    reported: WorkerConfigAPI = config
    return reported


def address_line(config: WorkerConfigAPI) -> bytes:
    """The line a worker at ``config``'s address prints when it starts."""
    return f"distref_worker:{config.port}#{config.host}\n".encode()


class Recorder:
    """A manager that launches through LocalManager and records every call.

    ``gates[i]``, if present, is waited for before the i-th worker is
    reported; ``notify_each`` False reports without notifying.
    """

    def __init__(
        self,
        d: DistributedAPI,
        n: int,
        *,
        gates: Mapping[int, trio.Event] | None = None,
        notify_each: bool = True,
        linger: float = 0.0,
    ) -> None:
        self.d = d
        self.n = n
        self.gates = dict(gates or {})
        self.notify_each = notify_each
        self.linger = linger
        self.ops: list[tuple[int, str]] = []
        self.kills: list[int] = []
        self.reported: list[WorkerConfigAPI] = []
        self.pids: dict[int, int] = {}
        self.params: dict[str, Any] = {}
        self.launch_started = trio.Event()
        self.launch_returned = trio.Event()
        self.inner = d.LocalManager(1)

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Notify
    ) -> None:
        self.params = dict(params)
        self.launch_started.set()
        for index in range(self.n):
            gate = self.gates.get(index)
            if gate is not None:
                await gate.wait()
            config = await one_config(self.d, params)
            self.reported.append(config)
            launched.append(config)
            if self.notify_each:
                notify()
        await trio.sleep(self.linger)
        self.launch_returned.set()

    async def manage(self, pid: int, config: Any, op: str) -> None:
        self.ops.append((pid, op))
        if op == "register":
            self.pids[id(config)] = pid

    async def kill(self, pid: int, config: Any) -> None:
        self.kills.append(pid)
        kill = getattr(self.inner, "kill", None)
        assert callable(kill), "LocalManager has no kill method"
        await kill(pid, config)

    def pid_of(self, config: WorkerConfigAPI) -> int | None:
        return self.pids.get(id(config))


def _workers(d: DistributedAPI) -> list[int]:
    return [p for p in d.workers() if p != 1]


@contextlib.contextmanager
def captured_stdout() -> Iterator[io.StringIO]:
    """What the master prints on stdout during the block."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


# ------------------------------------------------------------ the contract


@scenario(
    "cluster_manager.launch-contract",
    "cluster_manager.launched-set-up-concurrently",
    "addprocs.manager-form",
    "addprocs.workers-usable-as-they-join",
    "procs.master-lists-connected-only",
)
async def workers_join_as_the_manager_reports_them(d: DistributedAPI) -> None:
    first_seen = trio.Event()
    manager = Recorder(d, 3, gates={1: first_seen})
    result: list[int] = []

    async def run() -> None:
        result.extend(await d.addprocs(manager))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        # The first worker is a member, and answers, while launch still runs.
        await eventually(
            lambda: _async(len(_workers(d)) == 1), "the first reported worker joined"
        )
        [early] = _workers(d)
        with within(PATIENCE, "a call to a worker joined during addprocs"):
            assert await d.remotecall_fetch(d.myid, early) == early
        assert not result, "addprocs returned before launch reported every worker"
        assert not manager.launch_returned.is_set()
        first_seen.set()

    assert manager.launch_returned.is_set()
    assert len(result) == 3 and result == sorted(result), (
        f"addprocs(manager) returned {result}, not 3 sorted pids"
    )
    await eventually(
        lambda: _async(all(manager.pid_of(c) for c in manager.reported)),
        "every reported worker was registered",
    )
    in_order = [manager.pid_of(c) for c in manager.reported]
    assert in_order == sorted(result), (
        f"pids by report order are {in_order}: not allocated in that order"
    )
    assert early == in_order[0]


async def _async(value: bool) -> bool:
    return value


class Connecting(Recorder):
    """Opens the master's connections itself, through LocalManager's."""

    def __init__(self, d: DistributedAPI, n: int) -> None:
        super().__init__(d, n)
        self.connected: list[int] = []

    async def connect(self, pid: int, config: Any) -> tuple[Any, Any]:
        connect = getattr(self.inner, "connect", None)
        assert callable(connect), "LocalManager has no connect method"
        read, write = await connect(pid, config)
        self.connected.append(pid)
        return read, write


@scenario("cluster_manager.connect-contract")
async def a_manager_may_open_the_masters_connections(d: DistributedAPI) -> None:
    manager = Connecting(d, 2)
    pids = await d.addprocs(manager)
    assert sorted(manager.connected) == pids, (
        f"connect was called for {manager.connected}, workers are {pids}"
    )
    for pid in pids:
        assert await d.remotecall_fetch(d.myid, pid) == pid
    # Worker to worker does not go through the manager's connect.
    assert (
        await d.remotecall_fetch(d.remotecall_fetch, pids[1], d.myid, pids[0])
        == (pids[0])
    )
    assert sorted(manager.connected) == pids


@scenario("procs.master-lists-connected-only", "cluster_manager.connect-contract")
async def a_reported_worker_is_listed_only_once_connected(d: DistributedAPI) -> None:
    """A worker reported with only an output stream joins once the stream
    names its address; until then procs() does not list it."""
    send, receive = trio.testing.memory_stream_one_way_pair()
    real = await one_config(d, d.default_addprocs_params())
    reported = d.WorkerConfig(io=receive, process=real.process)

    class Manager:
        async def launch(
            self, params: Mapping[str, Any], launched: list[Any], notify: Notify
        ) -> None:
            launched.append(reported)
            notify()

        async def manage(self, pid: int, config: Any, op: str) -> None:
            pass

    result: list[int] = []

    async def run() -> None:
        result.extend(await d.addprocs(Manager()))

    with captured_stdout() as out:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(0.5)
            assert d.procs() == [1], (
                f"procs() is {d.procs()} while the reported worker has not connected"
            )
            await send.send_all(b"starting up\n" + address_line(real))
    assert len(result) == 1 and d.procs() == [1, *result]
    assert reported.port == real.port, "the port was not taken from the address line"
    assert reported.host == real.host, "an unset host was not taken from the line"
    assert "\tFrom worker startup:\tstarting up\n" in out.getvalue()
    with within(PATIENCE, "a call to the worker"):
        assert await d.remotecall_fetch(d.myid, result[0]) == result[0]


@scenario("cluster_manager.launched-set-up-concurrently")
async def a_worker_reported_without_notify_is_found_within_a_second(
    d: DistributedAPI,
) -> None:
    manager = Recorder(d, 1, notify_each=False, linger=6.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.addprocs, manager)
        await manager.launch_started.wait()
        with within(5.0, "joining a worker appended without notify()"):
            while not _workers(d):
                await trio.sleep(0.05)
        assert not manager.launch_returned.is_set(), "the worker joined only at return"


@scenario("cluster_manager.launch-error-reraised")
async def an_error_of_launch_is_raised_after_the_launched_workers_joined(
    d: DistributedAPI,
) -> None:
    class Failing(Recorder):
        async def launch(
            self, params: Mapping[str, Any], launched: list[Any], notify: Notify
        ) -> None:
            await super().launch(params, launched, notify)
            raise KeyError("the manager's own failure")

    manager = Failing(d, 2)
    with within(PATIENCE * 2, "addprocs with a failing launch"):
        try:
            await d.addprocs(manager)
        except KeyError as exc:
            assert "the manager's own failure" in str(exc)
        else:
            raise AssertionError("addprocs did not raise what launch raised")
    assert len(_workers(d)) == 2, f"workers() is {d.workers()}: launched ones lost"
    for pid in _workers(d):
        assert await d.remotecall_fetch(d.myid, pid) == pid


@scenario("cluster_manager.manage-ops", "cluster_manager.kill-called-by-rmprocs")
async def manage_hears_each_operation_and_rmprocs_calls_kill(d: DistributedAPI) -> None:
    manager = Recorder(d, 2)
    with within(PATIENCE * 2, "addprocs(manager)"):
        pids = await d.addprocs(manager)
    await eventually(
        lambda: _async(sorted(p for p, op in manager.ops if op == "register") == pids),
        "manage(pid, config, 'register') for each new worker",
    )
    interrupt = getattr(d, "interrupt", None)
    if interrupt is not None:
        await interrupt(pids[0])
        await eventually(
            lambda: _async((pids[0], "interrupt") in manager.ops),
            "manage(pid, config, 'interrupt') after interrupt(pid)",
        )
    removal = await d.rmprocs(pids[0], waitfor=PATIENCE)
    await removal.wait()
    assert manager.kills == [pids[0]], f"rmprocs called kill for {manager.kills}"
    for op in ("deregister", "finalize"):
        await eventually(
            lambda op=op: _async((pids[0], op) in manager.ops),  # type: ignore[misc]
            f"manage(pid, config, {op!r}) once the worker is gone",
        )
    ops = [op for p, op in manager.ops if p == pids[0]]
    assert ops.index("register") < ops.index("deregister") < ops.index("finalize")
    assert all(p != pids[1] or op in ("register",) for p, op in manager.ops), (
        f"the other worker saw {manager.ops}"
    )


# ------------------------------------------------------ keywords, defaults


@scenario("addprocs.unknown-keyword-rejected")
async def an_unknown_keyword_is_rejected_by_name(d: DistributedAPI) -> None:
    for form in (1, ["localhost"], Recorder(d, 1)):
        try:
            await d.addprocs(form, frobnicate=1)
        except ValueError as exc:
            text = str(exc)
            assert "frobnicate" in text and "nvalid keyword argument" in text, text
        else:
            raise AssertionError(f"addprocs({form!r}, frobnicate=1) did not raise")
    assert d.workers() == [1]


@scenario("addprocs.default-params")
async def addprocs_defaults(d: DistributedAPI) -> None:
    params = d.default_addprocs_params()
    expected = {
        "topology": "all_to_all",
        "dir": os.getcwd(),
        "exename": sys.executable,
        "exeflags": (),
        "env": {},
        "enable_threaded_blas": False,
        "lazy": True,
    }
    for key, value in expected.items():
        assert key in params, f"default_addprocs_params() lacks {key!r}"
        got = params[key]
        if key in ("exeflags", "env"):
            assert not got, f"default {key} is {got!r}, not empty"
        else:
            assert got == value, f"default {key} is {got!r}, not {value!r}"
    manager = Recorder(d, 1)
    await d.addprocs(manager)
    for key, value in expected.items():
        got = manager.params[key]
        assert (not got) if key in ("exeflags", "env") else got == value, (
            f"launch got {key}={got!r}"
        )


@scenario("cluster_manager.default-params-extend")
async def a_manager_declares_extra_keywords(d: DistributedAPI) -> None:
    class Colourful(Recorder):
        def default_params(self) -> dict[str, Any]:
            return {"colour": "blue"}

    assert d.default_addprocs_params(Colourful(d, 0))["colour"] == "blue"
    plain = Colourful(d, 1)
    await d.addprocs(plain)
    assert plain.params["colour"] == "blue", "the declared default did not arrive"
    given = Colourful(d, 1)
    await d.addprocs(given, colour="red")
    assert given.params["colour"] == "red", "the given value did not arrive"
    try:
        await d.addprocs(Colourful(d, 1), color="red")
    except ValueError as exc:
        assert "color" in str(exc)
    else:
        raise AssertionError("an undeclared keyword was accepted")


@scenario("worker_config.fields-default-none")
async def worker_config_fields_default_to_none(d: DistributedAPI) -> None:
    config = d.WorkerConfig()
    for name in WORKER_CONFIG_FIELDS:
        assert hasattr(config, name), f"WorkerConfig has no field {name!r}"
        assert getattr(config, name) is None, f"WorkerConfig().{name} is not None"
    given = d.WorkerConfig(host="h", port=7, count="auto")
    assert (given.host, given.port, given.count) == ("h", 7, "auto")


@scenario("addprocs.only-on-master")
async def only_the_master_adds_and_removes(d: DistributedAPI) -> None:
    [pid] = await d.addprocs(1)
    for call, args in ((d.addprocs, (1,)), (d.rmprocs, (1,))):
        try:
            with within(PATIENCE, "addprocs/rmprocs on a worker"):
                await d.remotecall_fetch(call, pid, *args)
        except RemoteException as exc:
            assert isinstance(exc.exception, NotMasterError), repr(exc.exception)
            assert exc.pid == pid
        else:
            raise AssertionError(f"{call.__name__} ran on worker {pid}")
    assert d.workers() == [pid]


@scenario("addprocs.one-at-a-time")
async def addprocs_and_rmprocs_run_one_after_another(d: DistributedAPI) -> None:
    [old] = await d.addprocs(1)
    gate = trio.Event()
    slow = Recorder(d, 1, gates={0: gate})
    second = Recorder(d, 1)
    finished: list[str] = []

    async def add(manager: Recorder, name: str) -> None:
        await d.addprocs(manager)
        finished.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(add, slow, "first")
        await slow.launch_started.wait()
        nursery.start_soon(add, second, "second")
        removal = await d.rmprocs(old, waitfor=0)
        await trio.sleep(1.0)
        assert not second.launch_started.is_set(), "two addprocs overlapped"
        assert not removal.done, "rmprocs ran while addprocs was under way"
        gate.set()
        with within(PATIENCE * 2, "the queued membership changes"):
            await removal.wait()
    assert finished[0] == "first", f"finished in the order {finished}"
    assert len(_workers(d)) == 2 and old not in d.workers()


# ------------------------------------------------------------ launch errors


class Spoiled:
    """Reports one good worker and workers whose output says ``outputs``."""

    def __init__(self, d: DistributedAPI, outputs: list[bytes | None]) -> None:
        self.d = d
        self.outputs = outputs
        self.streams: list[trio.abc.SendStream] = []

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Notify
    ) -> None:
        launched.append(await one_config(self.d, params))
        notify()
        for output in self.outputs:
            send, receive = trio.testing.memory_stream_one_way_pair()
            launched.append(self.d.WorkerConfig(io=receive))
            notify()
            if output is not None:
                await send.send_all(output)
                await send.aclose()
            else:
                self.streams.append(send)

    async def manage(self, pid: int, config: Any, op: str) -> None:
        pass


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


@scenario(
    "addprocs.launch-errors-grouped",
    "addprocs.address-line-failures",
    "addprocs.launch-junk-echoed",
)
async def failed_launches_are_grouped_and_the_good_worker_stays(
    d: DistributedAPI,
) -> None:
    junk = b"".join(b"noise %d\n" % i for i in range(1000))
    manager = Spoiled(d, [b"", b"a line\nanother line\n", junk])
    raised: list[BaseException] = []
    with captured_stdout() as out:
        try:
            with within(PATIENCE * 2, "addprocs with failing launches"):
                await d.addprocs(manager)
        except ExceptionGroup as exc:
            raised.append(exc)
        else:
            raise AssertionError("addprocs did not raise for three failed workers")
    [failure] = raised
    errors = _leaves(failure)
    assert isinstance(failure, LaunchError), "the group is not also a LaunchError"
    assert len(errors) == 3 and all(isinstance(e, LaunchError) for e in errors), (
        f"expected three LaunchErrors, got {errors!r}"
    )
    texts = sorted(str(e) for e in errors)
    unable = "Unable to read host:port string from worker. Launch command exited"
    unexpected = (
        "Unexpected output from worker launch command. Host:port string not found."
    )
    assert sum(unable in t for t in texts) == 2, texts
    assert sum(unexpected in t for t in texts) == 1, texts
    echoed = out.getvalue()
    for line in ("a line", "another line", "noise 0", "noise 999"):
        assert f"\tFrom worker startup:\t{line}\n" in echoed, f"{line!r} not echoed"
    [good] = _workers(d)
    assert await d.remotecall_fetch(d.myid, good) == good


# ------------------------------------------------------------ LocalManager


@scenario("local_manager.repr")
async def local_manager_repr(d: DistributedAPI) -> None:
    assert repr(d.LocalManager(3)) == "LocalManager()"
    assert repr(d.LocalManager(1, restrict=False)) == "LocalManager()"


@scenario("local_manager.default-count-cpu")
async def addprocs_without_a_count_starts_one_worker_per_cpu(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE * 3, "addprocs()"):
        pids = await d.addprocs()
    assert len(pids) == (os.cpu_count() or 1), f"addprocs() gave {pids}"


@scenario("local_manager.restrict-loopback", needs=("real_processes",))
async def local_workers_listen_on_loopback_unless_unrestricted(
    d: DistributedAPI,
) -> None:
    [restricted] = await d.addprocs(1)
    host, _ = only_listening_address(await d.remotecall_fetch(tcp_sockets, restricted))
    assert host == "127.0.0.1", f"a restricted worker listens on {host}"
    [free] = await d.addprocs(1, restrict=False)
    sockets = await d.remotecall_fetch(tcp_sockets, free)
    [(host, _)] = sockets.listening
    masters = {theirs[0] for mine, theirs in sockets.accepted()}
    assert host in masters, (
        f"an unrestricted worker listens on {host}, not on the master's "
        f"address {masters}"
    )


def _launch_facts() -> dict[str, Any]:
    return {
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "executable": sys.executable,
        "utf8": sys.flags.utf8_mode,
    }


@scenario("local_manager.launch-options", needs=("real_processes",))
async def local_workers_start_as_the_keywords_say(d: DistributedAPI) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as place:
        # exename: a wrapper that marks the environment, then runs Python.
        exename = os.path.join(place, "python-wrapper")
        with open(exename, "w") as script:
            script.write(
                "#!/bin/sh\nDISTREF_WRAPPED=yes exec "
                f'{shlex.quote(sys.executable)} "$@"\n'
            )
        os.chmod(exename, 0o755)
        [pid] = await d.addprocs(
            1,
            dir=place,
            exename=exename,
            exeflags=["-X", "utf8"],
            env={"DISTREF_SCENARIO": "yes", "OPENBLAS_NUM_THREADS": "7"},
        )
        facts = await d.remotecall_fetch(_launch_facts, pid)
        assert os.path.samefile(facts["cwd"], place), f"cwd is {facts['cwd']}"
        assert facts["env"].get("DISTREF_WRAPPED") == "yes", "exename was not run"
        assert facts["utf8"] == 1, "exeflags did not reach the interpreter"
        env = facts["env"]
        assert env.get("DISTREF_SCENARIO") == "yes"
        assert env.get("OPENBLAS_NUM_THREADS") == "7", "env did not win"
        assert env.get("OMP_NUM_THREADS") == "1"
        await d.rmprocs(pid)

    [threaded] = await d.addprocs(1, enable_threaded_blas=True)
    env = (await d.remotecall_fetch(_launch_facts, threaded))["env"]
    assert env.get("OPENBLAS_NUM_THREADS") == os.environ.get("OPENBLAS_NUM_THREADS"), (
        "enable_threaded_blas=True still set OPENBLAS_NUM_THREADS"
    )


def _print_lines(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


@scenario("local_manager.output-relayed-with-prefix", needs=("real_processes",))
async def worker_output_comes_back_prefixed(d: DistributedAPI) -> None:
    with captured_stdout() as out:
        [pid] = await d.addprocs(1)
        await d.remotecall_fetch(
            _print_lines, pid, "plain text", "      From worker 99:\tpassed on"
        )
        await eventually(
            lambda: _async("passed on" in out.getvalue()), "the worker's output"
        )
    text = out.getvalue()
    assert f"      From worker {pid}:\tplain text\n" in text, text
    assert "      From worker 99:\tpassed on\n" in text, text
    assert f"From worker {pid}:\t      From worker 99" not in text


# ------------------------------------------------------------ SSHManager


@scenario("ssh_manager.machine-count", "ssh_manager.repr")
async def machines_merge_and_show(d: DistributedAPI) -> None:
    manager = d.SSHManager(["a", "b", "a", ("b", 2), ("c", "auto"), ("c", 3)])
    assert repr(manager) == "SSHManager(machines={'a': 2, 'b': 3, 'c': 'auto'})", repr(
        manager
    )
    for bad in (("a", 0), ("a", -1), ("a", "many"), ("a", 1.5)):
        try:
            d.SSHManager([bad])
        except ValueError:
            continue
        raise AssertionError(f"count {bad[1]!r} was accepted")


@scenario("ssh_manager.invalid-spec-rejected")
async def bad_machine_specs_are_rejected(d: DistributedAPI) -> None:
    good = [
        "h",
        "u@h",
        "h:22",
        "u@h:65535 10.0.0.1",
        "h 10.0.0.1:9000",
        "[::1]:22",
        "u@[fe80::1] [::1]:1",
    ]
    d.SSHManager(good)
    bad = ["h:0", "h:65536", "h:x", "::1", "u@::1:22", "h b c", "", "h [::1", "h:"]
    for spec in bad:
        try:
            d.SSHManager([spec])
        except ValueError as exc:
            assert "invalid machine definition format string" in str(exc), str(exc)
            assert repr(spec) in str(exc), f"{spec!r} not named in {exc}"
        else:
            raise AssertionError(f"machine spec {spec!r} was accepted")
    try:
        await d.addprocs(["h:99999"])
    except ValueError as exc:
        assert "invalid machine definition format string" in str(exc)
    else:
        raise AssertionError("addprocs accepted a bad machine spec")


@scenario("ssh_manager.option-defaults")
async def ssh_keywords_and_their_defaults(d: DistributedAPI) -> None:
    manager: ClusterManagerAPI = d.SSHManager(["h"])
    params = d.default_addprocs_params(manager)
    expected = {
        "tunnel": False,
        "max_parallel": 10,
        "ssh": "ssh",
        "shell": "posix",
        "cmdline_cookie": False,
        "multiplex": False,
    }
    for key, value in expected.items():
        assert params.get(key) == value, f"{key} defaults to {params.get(key)!r}"
    assert not params["sshflags"], f"sshflags defaults to {params['sshflags']!r}"
    assert params["topology"] == "all_to_all", "the common keywords are missing"
