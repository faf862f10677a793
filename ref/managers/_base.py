"""Cluster managers: the interface, the worker description, and addprocs.

Julia's ``Distributed`` separates *starting* workers from *joining* them.
A ``ClusterManager`` starts worker processes by whatever means it knows
(child processes, ssh, srun, workers that dial in) and describes each one
with a ``WorkerConfig``; the master then connects to each described worker,
gives it a pid and makes it a member.  This module holds both halves of that
contract and the loop in between (Julia's ``addprocs_locked`` and
``setup_launched_worker`` in ``cluster.jl``, ``connect`` in
``managers.jl``):

* ``ClusterManager.launch(params, launched, notify)`` runs in its own task.
  It appends one ``WorkerConfig`` to ``launched`` per started worker and
  calls ``notify()``; returning means that no more will come.
* Meanwhile the master takes each config as it appears (and looks again at
  least once a second, in case a manager forgot to notify), allocates the
  next pid, and sets the worker up in a task of its own, concurrently with
  the launch and with the other set-ups.  Setting up means
  ``manager.connect`` (by default: read the worker's address line from
  ``config.io`` if there is one, then open a stream to it), then the join
  handshake of the runtime (``Process.setup_worker``), then
  ``manage(pid, config, "register")``.
* A worker whose config asks for ``count > 1`` (or ``"auto"``: as many as
  it has CPU threads) starts the extra ones itself; the master connects to
  them as further workers (``launch_additional``).
* Failures stay per worker: a worker that cannot be set up becomes one
  ``LaunchError`` and the others join.  When everything settled,
  ``addprocs`` raises a ``LaunchErrorGroup`` of those errors (and of the
  ``LaunchError`` s that ``launch`` itself raised); an error of another kind
  raised by ``launch`` is raised as it is.  Workers that joined stay.

After set-up the master keeps, per worker, the manager and the config
(``ManagedWorker``): ``rmprocs`` calls ``manager.kill(pid, config)``, a
departure ``manage(..., "deregister")``, ``interrupt``
``manage(..., "interrupt")``, and the final clean-up, once the worker's
process is gone, ``manage(..., "finalize")``.

Every ``addprocs`` form ends up here: ``addprocs(n)`` is
``addprocs(LocalManager(n))`` and ``addprocs(["host", ...])`` is
``addprocs(SSHManager([...]))``.  ``LocalManager`` starts its workers
through the cluster's ``Launcher`` seam, which is how the simulator keeps
working under the same code.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import trio

from spec.api import LaunchError, LaunchErrorGroup

from .._context import current_process
from .._process import Process
from .._seams import LaunchedWorker, SuspendableHandle, WorkerHandle
from .._startup import LineReader, read_address, relay_lines

log = logging.getLogger("ref")

#: How often the master looks at ``launched`` without being notified.
RECHECK_INTERVAL = 1.0

#: Seconds a worker whose set-up failed may take to exit before it is killed.
FAILED_SETUP_GRACE = 5.0

#: The operations ``manage`` is called with.
MANAGE_OPS = ("register", "deregister", "interrupt", "finalize")


# ------------------------------------------------------------ WorkerConfig


@dataclass(eq=False)
class WorkerConfig:
    """What a manager knows about one worker it started; every field optional.

    The fields are Julia's.  A manager fills in what it knows; the master
    reads and completes the rest while it connects:

    * ``io``: a ``trio.abc.ReceiveStream`` with the worker's output.  The
      master reads the address line ``distref_worker:<port>#<host>`` from
      it, then relays every further line prefixed with the worker's pid.
    * ``host``: the host the worker runs on, as the manager reached it
      (it may carry a ``user@`` prefix; an SSH tunnel goes there);
      ``port``: where the worker listens, taken from the address line when
      there is ``io``.
    * ``bind_addr``: the address the worker listens on, where the master
      and the other workers connect (default: the address from the address
      line, else ``host``); ``connect_at`` is set by the master to
      ``(bind_addr, port)``.
    * ``count``: how many workers this entry stands for (an int, or
      ``"auto"`` for the host's CPU threads); the extra ones are started by
      this worker with ``exename`` and ``exeflags``.
    * ``tunnel``, ``multiplex``, ``sshflags``, ``max_parallel``,
      ``forward``: SSH settings (the master connects through an ``ssh -L``
      tunnel when ``tunnel`` is true; ``forward`` is what it forwarded).
    * ``process``: the manager's grip on the process: a runtime
      ``WorkerHandle``, a ``trio.Process``, or anything the manager's own
      ``kill`` understands; ``ospid`` the worker's OS pid (filled in by the
      master once the worker joined).
    * ``environ``: a dict the manager may use; the master stores
      ``"cpu_threads"`` there when it asks for it.
    * ``ident``, ``connect_idents``: the ``custom`` topology (the worker
      connects to the workers whose ``ident`` its ``connect_idents`` list).
    * ``userdata``: free for the manager.
    """

    io: Any = None
    host: str | None = None
    port: int | None = None
    count: int | str | None = None
    exename: str | None = None
    exeflags: Sequence[str] | None = None
    userdata: Any = None
    tunnel: bool | None = None
    multiplex: bool | None = None
    forward: str | None = None
    bind_addr: str | None = None
    sshflags: Sequence[str] | None = None
    max_parallel: int | None = None
    connect_at: tuple[str, int] | None = None
    process: Any = None
    ospid: int | None = None
    environ: dict[str, Any] | None = None
    ident: Any = None
    connect_idents: Sequence[Any] | None = None
    enable_threaded_blas: bool | None = None


#: The names of ``WorkerConfig``'s fields, in Julia's order.
WORKER_CONFIG_FIELDS = tuple(f.name for f in fields(WorkerConfig))


# --------------------------------------------------------- ClusterManager


Notify = Callable[[], None]


@runtime_checkable
class ManagerLike(Protocol):
    """What ``addprocs`` needs of a manager: ``launch`` and ``manage``.

    Subclassing ``ClusterManager`` gives the optional methods their
    defaults; a plain class with these two methods works too.
    """

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Notify
    ) -> None: ...

    async def manage(self, pid: int, config: Any, op: str) -> None: ...


class ClusterManager:
    """Base class of the things that start workers for ``addprocs``.

    Subclasses must implement ``launch``; ``manage``, ``kill``, ``connect``
    and ``default_params`` have working defaults.  Every method runs on the
    master, in the master's trio loop.
    """

    def default_params(self) -> dict[str, Any]:
        """Extra ``addprocs`` keywords this manager accepts, with defaults.

        ``addprocs(manager, **kw)`` accepts the common keywords (see
        ``default_addprocs_params``) plus these, and rejects any other.
        """
        return {}

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Notify,
    ) -> None:
        """Start the workers; append one ``WorkerConfig`` each and ``notify()``.

        ``params`` holds every ``addprocs`` keyword with its value or
        default.  Return once every worker was started (or failed to): the
        return tells the master that no more configs will come.  Raise a
        ``LaunchError`` (or a group of them) for workers that could not be
        started; those that were appended stay.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement launch")

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """React to ``op`` for worker ``pid``: one of ``MANAGE_OPS``.

        ``"register"`` after the worker joined, ``"deregister"`` once it has
        left (removed or died), ``"interrupt"`` from ``interrupt(pid)``,
        ``"finalize"`` once its process is gone.  The default does nothing.
        """

    async def kill(self, pid: int, config: WorkerConfig) -> None:
        """Make worker ``pid`` exit; called by ``rmprocs``.

        The default asks the worker to exit over its connection, as
        ``remote_do(exit, pid)`` would.  A manager that needs more (a
        signal, a job cancellation) overrides it.
        """
        await current_process().ask_to_exit(pid)

    async def connect(
        self, pid: int, config: WorkerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """Open the master's connection to worker ``pid``: ``(read, write)``.

        The streams must deliver bytes completely and in order; they may be
        one object.  The default reads the address line from ``config.io``
        when there is one (its host is the bind address; it fills in
        ``config.host`` if unset, and ``config.port``), otherwise takes
        ``config.bind_addr`` (or ``config.host``) and ``config.port``; dials
        that bind address, or with ``config.tunnel`` goes through an ssh
        tunnel to ``config.host``; and records ``bind_addr`` and
        ``connect_at``.
        """
        stream = await default_connect(pid, config)
        return stream, stream


def default_addprocs_params(manager: object = None) -> dict[str, Any]:
    """The keywords ``addprocs`` accepts, with their defaults.

    Common to every manager: ``topology="all_to_all"``, ``dir`` (the
    master's current directory), ``exename`` (the master's Python),
    ``exeflags=()``, ``env={}``, ``enable_threaded_blas=False`` and
    ``lazy=True``; then whatever ``manager.default_params()`` adds.
    """
    params: dict[str, Any] = {
        "topology": "all_to_all",
        "dir": os.getcwd(),
        "exename": sys.executable,
        "exeflags": (),
        "env": {},
        "enable_threaded_blas": False,
        "lazy": True,
    }
    extra = getattr(manager, "default_params", None)
    if callable(extra):
        params.update(extra())
    return params


def manager_params(manager: object, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against what ``manager`` accepts, defaults filled in.

    An unknown keyword raises ``ValueError`` naming it; values of the
    common keywords are checked and normalised (``exeflags`` to a tuple of
    strings, ``env`` to a dict of strings).
    """
    params = default_addprocs_params(manager)
    for key in given:
        if key not in params:
            accepted = ", ".join(sorted(params))
            raise ValueError(
                f"addprocs: Invalid keyword argument {key!r} for {manager!r}; "
                f"the accepted keywords are {accepted}"
            )
    params.update(given)
    params["dir"] = _check_dir(params["dir"])
    params["exename"] = _check_exename(params["exename"])
    params["exeflags"] = _check_exeflags(params["exeflags"])
    params["env"] = check_env(params["env"])
    if not isinstance(params["enable_threaded_blas"], bool):
        raise ValueError(
            "addprocs: enable_threaded_blas="
            f"{params['enable_threaded_blas']!r} must be True or False"
        )
    return params


def _check_dir(value: object) -> str:
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"addprocs: dir={value!r} must be a path")
    return os.fspath(value)


def _check_exename(value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"addprocs: exename={value!r} must be a program path")
    return value


def _check_exeflags(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if not isinstance(value, Iterable) or not all(isinstance(x, str) for x in value):
        raise ValueError(
            f"addprocs: exeflags={value!r} must be a list of strings "
            "(or one string, split like a shell would)"
        )
    return tuple(value)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env(value: object) -> dict[str, str]:
    """``env`` (a mapping or pairs) as a dict of names to strings."""
    items: Iterable[Any]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, Iterable) and not isinstance(value, str):
        items = value
    else:
        raise ValueError(f"addprocs: env={value!r} must be a mapping or pairs")
    env: dict[str, str] = {}
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"addprocs: env entry {item!r} is not a (name, value)")
        name, text = item
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"addprocs: env name {name!r} is not a variable name")
        if not isinstance(text, str):
            raise ValueError(f"addprocs: env[{name!r}]={text!r} must be a string")
        env[name] = text
    return env


# ------------------------------------------------- reading the address line


_readers: weakref.WeakKeyDictionary[WorkerConfig, LineReader] = (
    weakref.WeakKeyDictionary()
)


def line_reader(config: WorkerConfig) -> LineReader:
    """The one line reader over ``config.io`` (address line, then relay)."""
    reader = _readers.get(config)
    if reader is None:
        reader = _readers[config] = LineReader(config.io)
    return reader


def split_user(host: str) -> tuple[str | None, str]:
    """``"user@host"`` as ``("user", "host")``; no user gives ``None``."""
    user, at, rest = host.rpartition("@")
    return (user, rest) if at else (None, host)


async def default_connect(pid: int, config: WorkerConfig) -> trio.abc.Stream:
    """The default ``ClusterManager.connect``, as one bidirectional stream."""
    proc = current_process()
    if config.io is not None:
        bind_addr, port = await read_address(line_reader(config), proc.worker_timeout)
        if config.host is None:
            config.host = bind_addr
        config.port = port
    elif config.host is None or config.port is None:
        raise LaunchError(
            f"the WorkerConfig of worker {pid} has no io and no host and port; "
            "a manager must give one or the other"
        )
    else:
        bind_addr = config.bind_addr or config.host
        port = config.port
    bind_addr = split_user(bind_addr)[1]
    config.bind_addr = bind_addr
    config.connect_at = (bind_addr, port)

    # Through a tunnel the master reaches the worker via ``host``'s sshd;
    # otherwise it dials the bind address, as the worker's peers will.
    if config.tunnel:
        from ._ssh import open_tunnel

        return await open_tunnel(pid, config)
    try:
        return await proc.transport.connect(bind_addr, port)
    except OSError as exc:
        raise LaunchError(
            f"could not connect to worker {pid} at {bind_addr}:{port}: {exc}"
        ) from exc


# --------------------------------------------------------- per-worker glue


async def _manage_quietly(
    manager: ManagerLike, pid: int, config: WorkerConfig, op: str
) -> None:
    """``manager.manage``; what it raises is logged, never propagated."""
    try:
        await manager.manage(pid, config, op)
    except Exception:
        log.exception("manage(%r, %d, %r) failed", manager, pid, op)


class ManagedHandle:
    """The runtime's ``WorkerHandle`` for a worker that a manager started.

    It stops the worker through whatever the config holds (``process``: a
    runtime handle, a ``trio.Process``, or nothing), relays ``io``, turns
    ``interrupt`` into ``manage(pid, config, "interrupt")``, and calls
    ``manage(pid, config, "finalize")`` once the process is gone.
    """

    def __init__(self, manager: ManagerLike, config: WorkerConfig, pid: int) -> None:
        self.manager = manager
        self.config = config
        self.pid = pid
        self._finalized = False

    @property
    def inner(self) -> WorkerHandle | None:
        """The launcher's own handle, when the config carries one."""
        process = self.config.process
        if isinstance(process, LaunchedWorker):
            return process.handle
        if hasattr(process, "start_output_relay") and hasattr(process, "stop"):
            return process  # type: ignore[no-any-return]  # a WorkerHandle
        return None

    @property
    def ospid(self) -> int | None:
        inner = self.inner
        if inner is not None:
            return inner.ospid
        if self.config.ospid is not None:
            return self.config.ospid
        if isinstance(self.config.process, trio.Process):
            return self.config.process.pid
        return None

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        inner = self.inner
        if inner is not None:
            inner.start_output_relay(pid, nursery)
        elif self.config.io is not None:
            nursery.start_soon(relay_lines, line_reader(self.config), pid)

    async def stop(self, grace: float) -> None:
        with trio.CancelScope(shield=True):
            inner = self.inner
            process = self.config.process
            if inner is not None:
                await inner.stop(grace)
            elif isinstance(process, trio.Process):
                with trio.move_on_after(grace):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await self._close_io()
            if not self._finalized:
                self._finalized = True
                await _manage_quietly(self.manager, self.pid, self.config, "finalize")

    def kill(self) -> None:
        inner = self.inner
        process = self.config.process
        if inner is not None:
            inner.kill()
        elif isinstance(process, trio.Process) and process.returncode is None:
            process.kill()

    async def interrupt(self) -> None:
        await _manage_quietly(self.manager, self.pid, self.config, "interrupt")

    def suspend(self) -> None:
        """Stop the worker (``faults.suspend``) through the launcher's handle."""
        self._forward("suspend")

    def resume(self) -> None:
        """Continue a stopped worker (``faults.resume``)."""
        self._forward("resume")

    def _forward(self, what: str) -> None:
        inner = self.inner
        if not isinstance(inner, SuspendableHandle):
            # A trio.Process here may be a go-between (SSHManager's ssh
            # client): stopping it would not stop the worker.
            raise NotImplementedError(
                f"cannot {what} worker {self.pid}: only a worker started "
                "through the cluster's launcher (LocalManager) can be; its "
                f"WorkerConfig.process is {self.config.process!r}"
            )
        getattr(inner, what)()

    async def _close_io(self) -> None:
        io = self.config.io
        if isinstance(io, trio.abc.AsyncResource):
            await io.aclose()


@dataclass
class ManagedWorker:
    """A member's manager and config, as the master keeps them."""

    manager: ManagerLike
    config: WorkerConfig
    pid: int

    async def kill(self) -> None:
        """``rmprocs``: the manager's ``kill``, or the default exit request."""
        kill = getattr(self.manager, "kill", None)
        try:
            if callable(kill):
                await kill(self.pid, self.config)
                return
        except Exception:
            log.exception("kill(%r, %d) failed", self.manager, self.pid)
        await current_process().ask_to_exit(self.pid)

    async def deregister(self) -> None:
        """The worker left the cluster: tell its manager."""
        await _manage_quietly(self.manager, self.pid, self.config, "deregister")


# ------------------------------------------------------------------ addprocs


async def launch_and_setup(
    proc: Process, manager: ManagerLike, params: dict[str, Any]
) -> list[int]:
    """Drive ``manager``: set up each worker as it is launched; new pids, sorted.

    The caller holds the membership lock and has checked ``params``.
    Raises ``LaunchErrorGroup`` when some workers failed (the others have
    joined by then), or what ``launch`` raised if it is not a LaunchError.
    """
    run = _AddprocsRun(proc, manager, params)
    await run.run()
    if run.pids:
        await proc.announce_peers()
    return run.finish()


class _AddprocsRun:
    """The state of one ``addprocs``: the launch task and the set-ups."""

    def __init__(
        self, proc: Process, manager: ManagerLike, params: dict[str, Any]
    ) -> None:
        self.proc = proc
        self.manager = manager
        self.params = params
        self.launched: list[WorkerConfig] = []
        self.pids: list[int] = []
        self.failures: list[LaunchError] = []
        self.launch_error: BaseException | None = None
        self.launch_done = False
        self.active = 0
        self._wake = trio.Event()

    def notify(self) -> None:
        """What ``launch`` calls after appending: look at ``launched`` now."""
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._launch)
            while True:
                while self.launched:
                    config = self.launched.pop(0)
                    if not isinstance(config, WorkerConfig):
                        self.failures.append(self._not_a_config(config))
                        continue
                    # Allocated here, in the order the manager reported.
                    pid = self.proc.group.allocate_pid()
                    self.active += 1
                    nursery.start_soon(self._setup, pid, config)
                if self.launch_done and self.active == 0:
                    break
                with trio.move_on_after(RECHECK_INTERVAL):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _not_a_config(self, config: object) -> LaunchError:
        return LaunchError(
            f"{self.manager!r}.launch appended {config!r} to launched; "
            "append WorkerConfig objects"
        )

    async def _launch(self) -> None:
        try:
            await self.manager.launch(self.params, self.launched, self.notify)
        except Exception as exc:
            self.launch_error = exc
        finally:
            self.launch_done = True
            self.notify()

    async def _setup(self, pid: int, config: WorkerConfig) -> None:
        try:
            await self._setup_one(pid, config)
        except LaunchError as exc:
            self.failures.append(exc)
        except Exception as exc:
            error = LaunchError(f"setting up worker {pid} failed: {exc!r}")
            error.__cause__ = exc
            self.failures.append(error)
        finally:
            self.active -= 1
            self.notify()

    async def _setup_one(self, pid: int, config: WorkerConfig) -> None:
        proc, manager = self.proc, self.manager
        handle = ManagedHandle(manager, config, pid)
        try:
            stream = await self._connect(pid, config)
        except BaseException:
            with trio.CancelScope(shield=True):
                handle.kill()
                await handle.stop(0)
            raise

        async def opened(_pid: int) -> trio.abc.Stream:
            return stream

        host, port = config.connect_at or (
            split_user(config.bind_addr or config.host or "")[1],
            config.port or 0,
        )
        launched = LaunchedWorker(
            host=host,
            port=port,
            handle=handle,
            local=_is_local(manager),
            params=self.params,
            ident=config.ident,
            connect_idents=tuple(config.connect_idents or ()),
            connect=opened,
        )
        try:
            await proc.setup_worker(launched, pid=pid)
        except LaunchError:
            # Reap it (and tell the manager) soon rather than at shutdown;
            # a worker that is exiting by itself gets a moment to.
            proc.spawn(handle.stop, FAILED_SETUP_GRACE)
            raise

        peer = proc.group.peer(pid)
        if config.ospid is None:
            config.ospid = peer.ospid
        proc.managed[pid] = ManagedWorker(manager, config, pid)
        self.pids.append(pid)
        proc.spawn(_manage_quietly, manager, pid, config, "register")
        first = config.userdata.get("started_by") if _is_dict(config.userdata) else None
        if isinstance(first, int):
            from ._additional import relay_child

            await proc.remote_do(relay_child, first, (pid, config.port), {})
        await self._launch_extra(pid, config)

    async def _connect(self, pid: int, config: WorkerConfig) -> trio.abc.Stream:
        connect = getattr(self.manager, "connect", None)
        if not callable(connect):
            return await default_connect(pid, config)
        read, write = await connect(pid, config)
        if read is write:
            stream: trio.abc.Stream = read
            return stream
        return trio.StapledStream(write, read)

    async def _launch_extra(self, pid: int, config: WorkerConfig) -> None:
        """``count > 1``: have worker ``pid`` start the rest of its host's share."""
        count = config.count
        if count is None:
            return
        if count == "auto":
            threads = await self.proc.remotecall_fetch(os.cpu_count, pid, (), {})
            count = int(threads or 1)
            config.environ = {**(config.environ or {}), "cpu_threads": count}
        if not isinstance(count, int) or count <= 1:
            return
        from ._additional import launch_additional

        try:
            extra, failed = await launch_additional(self.proc, pid, config, count - 1)
        except Exception as exc:
            raise LaunchError(
                f"worker {pid} (which joined) could not start the other "
                f"{count - 1} workers asked of its host: {exc}"
            ) from exc
        self.failures.extend(failed)
        self.launched.extend(extra)
        self.notify()

    def finish(self) -> list[int]:
        """The new pids, sorted; or the failures raised as described."""
        failures = list(self.failures)
        other: BaseException | None = None
        error = self.launch_error
        if isinstance(error, BaseExceptionGroup):
            matched, rest = error.split(LaunchError)
            if matched is not None:
                failures.extend(_leaves(matched))
            other = rest
        elif isinstance(error, LaunchError):
            failures.append(error)
        elif error is not None:
            other = error

        started = sorted(self.pids)
        if other is not None:
            for failure in failures:
                other.add_note(f"also, a worker failed to start: {failure}")
            raise other
        if failures:
            raise LaunchErrorGroup(
                f"addprocs: {len(failures)} worker(s) failed to start "
                f"(started: {started}): {failures[0]}",
                failures,
            )
        return started


def _leaves(group: BaseExceptionGroup[LaunchError]) -> list[LaunchError]:
    found: list[LaunchError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _is_local(manager: object) -> bool:
    from ._local import LocalManager

    return isinstance(manager, LocalManager)
