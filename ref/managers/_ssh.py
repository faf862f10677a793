"""``SSHManager``: workers on other hosts, started over ssh.

The model is Julia's ``SSHManager`` (``managers.jl``): for every machine,
one ``ssh`` session runs one worker; a machine asked for more workers gets
them started by that first worker (``WorkerConfig.count``, see
``_additional``).  What differs is on purpose:

* the cookie always travels on the ssh session's stdin, never on a command
  line (``cmdline_cookie=True`` is refused), and the session's stdin stays
  open: the worker exits when its ssh session ends;
* the worker listens on the address the master reaches it by (the machine
  spec's ``bind_addr`` if given, else its host), not on every interface;
* ``multiplex=True`` runs one ``ssh -M -N`` control master per host as a
  child of the master, ended when the last worker started through it is
  gone (upstream leaves a persistent one behind);
* with ``tunnel=True`` each worker gets its own ``ssh -N -L`` child,
  ended with the worker.

Machine specs are ``"[user@]host[:port] [bind_addr[:port]]"``, IPv6
addresses in brackets, or ``(spec, count)`` with count an int or ``"auto"``
(the host's CPU threads).  The remote command is built for the login shell
named by ``shell``: ``"posix"`` (``sh -l -c``), ``"csh"`` or ``"wincmd"``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shlex
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from spec.api import LaunchError, LaunchErrorGroup

from .._config import TIMEOUT_VARIABLE
from .._context import current_process
from .._local import THREAD_VARIABLES
from ._base import ClusterManager, Notify, WorkerConfig, default_connect, split_user

log = logging.getLogger("ref")

#: The options every ssh command gets (Julia's): no tty, no agent or X11
#: forwarding, and no forwardings from the user's configuration.
SSH_BASE_OPTIONS = ("-T", "-a", "-x", "-o", "ClearAllForwardings=yes")

SHELLS = ("posix", "csh", "wincmd")


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class MachineSpec:
    """One parsed machine spec: where to ssh, and where the worker listens."""

    text: str
    user: str | None
    host: str
    port: int | None
    bind_addr: str | None
    bind_port: int | None

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) as ssh takes it: IPv6 without brackets."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def listen(self) -> str:
        """The worker's ``--bind-to`` value."""
        addr = self.bind_addr or self.host
        shown = f"[{addr}]" if ":" in addr else addr
        return f"{shown}:{self.bind_port}" if self.bind_port else shown


def _invalid(spec: object, why: str) -> ValueError:
    return ValueError(
        f"invalid machine definition format string: {spec!r} ({why}); "
        "expected '[user@]host[:port] [bind_addr[:port]]'"
    )


_NAME = re.compile(r"^[A-Za-z0-9_.%-]+$")


def _host_and_port(spec: str, part: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (``[v6][:port]``) and check both halves."""
    if part.startswith("["):
        inside, closed, rest = part[1:].partition("]")
        if not closed or not inside:
            raise _invalid(spec, f"unclosed or empty brackets in {part!r}")
        try:
            ipaddress.IPv6Address(inside.split("%")[0])
        except ValueError:
            raise _invalid(spec, f"{inside!r} is not an IPv6 address") from None
        host = inside
        if rest and not rest.startswith(":"):
            raise _invalid(spec, f"unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    else:
        if part.count(":") > 1:
            raise _invalid(spec, "an IPv6 address must be written in brackets")
        host, colon, port_text_or_empty = part.partition(":")
        port_text = port_text_or_empty if colon else None
        if not host or not _NAME.match(host) or host.startswith("-"):
            raise _invalid(spec, f"{host!r} is not a host name or address")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _invalid(spec, f"port {port_text!r} is not an integer in 1..65535")
    return host, int(port_text)


def parse_machine(spec: str) -> MachineSpec:
    """Parse ``"[user@]host[:port] [bind_addr[:port]]"``; ValueError if bad."""
    if not isinstance(spec, str):
        raise _invalid(spec, "a machine spec is a string")
    parts = spec.split()
    if not 1 <= len(parts) <= 2:
        raise _invalid(spec, "expected one or two fields")
    user, at, rest = parts[0].rpartition("@")
    if at and (not user or not _NAME.match(user) or user.startswith("-")):
        raise _invalid(spec, f"{user!r} is not a user name")
    host, port = _host_and_port(spec, rest)
    bind_addr = bind_port = None
    if len(parts) == 2:
        bind_addr, bind_port = _host_and_port(spec, parts[1])
    return MachineSpec(spec, user or None, host, port, bind_addr, bind_port)


def merge_machines(machines: Iterable[Any]) -> dict[str, int | str]:
    """``{spec: count}`` with repeated specs merged (counts summed).

    An entry is a spec string (count 1) or ``(spec, count)``, count a
    positive int or ``"auto"``; ``"auto"`` merged with anything stays
    ``"auto"``.  Every spec is checked here.
    """
    if isinstance(machines, str | bytes):
        raise ValueError(
            f"machines={machines!r} must be a list of machine specs, "
            f"e.g. [{machines!r}]"
        )
    merged: dict[str, int | str] = {}
    for entry in machines:
        if isinstance(entry, tuple | list):
            if len(entry) != 2:
                raise ValueError(f"machine entry {entry!r} must be (spec, count)")
            spec, count = entry
        else:
            spec, count = entry, 1
        parse_machine(spec)
        if count != "auto" and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise ValueError(
                f"machine {spec!r}: count={count!r} must be a positive int or 'auto'"
            )
        known = merged.get(spec)
        if known == "auto" or count == "auto":
            merged[spec] = "auto"
        else:
            assert isinstance(count, int)
            merged[spec] = (known if isinstance(known, int) else 0) + count
    return merged


# -------------------------------------------------------- remote commands


def _quote_csh(text: str) -> str:
    if "\n" in text:
        raise ValueError(f"{text!r}: a csh command cannot carry a newline")
    return "'" + text.replace("'", "'\\''").replace("!", "\\!") + "'"


def _quote_cmd(text: str) -> str:
    if '"' in text:
        raise ValueError(f"{text!r}: a wincmd argument cannot contain '\"'")
    return f'"{text}"' if any(c in text for c in " &|<>^") else text


def remote_command(
    shell: str,
    *,
    dir: str,
    env: Mapping[str, str],
    exename: str,
    exeflags: Sequence[str],
    bind_to: str,
) -> str:
    """The command line ssh runs on the remote host, for its login shell."""
    worker = [exename, *exeflags, "-m", "ref.worker", "--bind-to", bind_to]
    if shell == "posix":
        lines = [f"cd -- {shlex.quote(dir)} || exit 1"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
        lines.append("exec " + shlex.join(worker))
        return shlex.join(["sh", "-l", "-c", "\n".join(lines)])
    if shell == "csh":
        lines = [f"cd {_quote_csh(dir)}"]
        lines += [f"setenv {name} {_quote_csh(value)}" for name, value in env.items()]
        lines.append("exec " + " ".join(_quote_csh(w) for w in worker))
        return "\n".join(lines)
    if shell == "wincmd":
        parts = [f"cd /D {_quote_cmd(dir)}"]
        parts += [f"set {name}={_quote_cmd(value)}" for name, value in env.items()]
        parts.append(" ".join(_quote_cmd(w) for w in worker))
        return " && ".join(parts)
    raise ValueError(f"shell={shell!r} must be one of {', '.join(SHELLS)}")


def worker_env(params: Mapping[str, Any]) -> dict[str, str]:
    """The variables exported on the remote side.

    Of the master's environment only ``DISTREF_WORKER_TIMEOUT`` goes along;
    unless ``enable_threaded_blas``, the BLAS/OpenMP thread variables are 1;
    ``env`` comes last and wins.
    """
    env: dict[str, str] = {}
    if TIMEOUT_VARIABLE in os.environ:
        env[TIMEOUT_VARIABLE] = os.environ[TIMEOUT_VARIABLE]
    if not params.get("enable_threaded_blas"):
        env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    env.update(params.get("env") or {})
    return env


# --------------------------------------------------------------- manager


class SSHManager(ClusterManager):
    """Starts workers on the hosts of ``machines`` over ssh."""

    def __init__(self, machines: Iterable[Any]) -> None:
        self.machines = merge_machines(machines)
        self._masters: dict[str, _ControlMaster] = {}
        self._limits: dict[str, trio.Semaphore] = {}
        #: The most connection set-ups seen at once, per host (for tests).
        self.peak_setups: dict[str, int] = {}
        self._setups: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SSHManager(machines={self.machines!r})"

    def default_params(self) -> dict[str, Any]:
        """``ssh``, ``sshflags``, ``shell``, ``cmdline_cookie``, ``tunnel``,
        ``multiplex`` and ``max_parallel``, with upstream's defaults."""
        return {
            "ssh": "ssh",
            "sshflags": (),
            "shell": "posix",
            "cmdline_cookie": False,
            "tunnel": False,
            "multiplex": False,
            "max_parallel": 10,
        }

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Notify,
    ) -> None:
        """One ssh session per machine, concurrently; failures grouped."""
        settings = _check_params(params)
        failures: list[LaunchError] = []

        async def one(spec: str, count: int | str) -> None:
            try:
                config = await self._launch_on(spec, count, params, settings)
            except LaunchError as exc:
                failures.append(exc)
                return
            launched.append(config)
            notify()

        async with trio.open_nursery() as nursery:
            for spec, count in self.machines.items():
                nursery.start_soon(one, spec, count)
        if failures:
            raise LaunchErrorGroup(
                f"{len(failures)} of {len(self.machines)} machines failed", failures
            )

    async def _launch_on(
        self,
        text: str,
        count: int | str,
        params: Mapping[str, Any],
        settings: _Settings,
    ) -> WorkerConfig:
        spec = parse_machine(text)
        proc = current_process()
        sshflags = list(settings.sshflags)
        if spec.port is not None:
            sshflags += ["-p", str(spec.port)]
        if settings.multiplex:
            master = await self._control_master(spec, settings.ssh, sshflags)
            sshflags += master.client_flags()

        command = remote_command(
            settings.shell,
            dir=params["dir"],
            env=worker_env(params),
            exename=params["exename"],
            exeflags=params["exeflags"],
            bind_to=spec.listen,
        )
        argv = [settings.ssh, *SSH_BASE_OPTIONS, *sshflags, spec.destination, command]
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            if settings.multiplex:
                await self._release(spec.destination)
            raise LaunchError(
                f"could not run {settings.ssh!r} for {text!r}: {exc}"
            ) from exc
        assert process.stdin is not None
        # If ssh failed already, its output says why.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.send_all(f"{proc.cookie}\n".encode("ascii"))

        return WorkerConfig(
            io=process.stdout,
            host=spec.destination,
            process=process,
            count=count,
            tunnel=settings.tunnel,
            multiplex=settings.multiplex,
            sshflags=tuple(sshflags),
            max_parallel=settings.max_parallel,
            exename=params["exename"],
            exeflags=tuple(params["exeflags"]),
            enable_threaded_blas=params["enable_threaded_blas"],
            userdata={"ssh": settings.ssh, "machine": spec.text},
        )

    async def connect(
        self, pid: int, config: WorkerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """The default connect, at most ``max_parallel`` at once per host."""
        host = split_user(config.host or "")[1]
        limit = self._limits.get(host)
        if limit is None:
            limit = self._limits[host] = trio.Semaphore(config.max_parallel or 10)
        async with limit:
            self._setups[host] = self._setups.get(host, 0) + 1
            self.peak_setups[host] = max(
                self.peak_setups.get(host, 0), self._setups[host]
            )
            try:
                stream = await default_connect(pid, config)
            finally:
                self._setups[host] -= 1
        return stream, stream

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """``interrupt``: ``kill -2 <ospid>`` over ssh; ``finalize``: end the
        worker's tunnel and, with the last worker, the host's control master."""
        if op == "interrupt":
            await self._interrupt(pid, config)
        elif op == "finalize":
            await _stop_tunnel(config)
            if config.multiplex and config.process is not None:
                await self._release(config.host)

    async def _interrupt(self, pid: int, config: WorkerConfig) -> None:
        if config.ospid is None:
            log.warning("Worker %d cannot be presently interrupted.", pid)
            return
        ssh = _ssh_program(config)
        argv = [
            ssh,
            *SSH_BASE_OPTIONS,
            "-n",
            *(config.sshflags or ()),
            config.host or "",
            f"kill -2 {int(config.ospid)}",
        ]
        result = await trio.run_process(argv, capture_stdout=True, check=False)
        if result.returncode != 0:
            log.warning("interrupting worker %d over ssh failed: %r", pid, result)

    async def _control_master(
        self, spec: MachineSpec, ssh: str, sshflags: list[str]
    ) -> _ControlMaster:
        master = self._masters.get(spec.destination)
        if master is None:
            master = _ControlMaster(ssh, [*sshflags], spec.destination)
            self._masters[spec.destination] = master
        await master.acquire()
        return master

    async def _release(self, destination: str | None) -> None:
        master = self._masters.get(destination or "")
        if master is not None and await master.release():
            del self._masters[master.destination]


@dataclass(frozen=True)
class _Settings:
    ssh: str
    sshflags: tuple[str, ...]
    shell: str
    tunnel: bool
    multiplex: bool
    max_parallel: int


def _check_params(params: Mapping[str, Any]) -> _Settings:
    """The SSH keywords, checked."""
    if params.get("cmdline_cookie"):
        raise ValueError(
            "addprocs: cmdline_cookie=True is not supported: distref never puts "
            "the cookie on a command line (other users can read those); it "
            "always travels on the ssh session's stdin"
        )
    shell = params.get("shell", "posix")
    if shell not in SHELLS:
        raise ValueError(f"addprocs: shell={shell!r} must be one of {SHELLS}")
    sshflags = params.get("sshflags") or ()
    if isinstance(sshflags, str):
        sshflags = shlex.split(sshflags)
    if not all(isinstance(flag, str) for flag in sshflags):
        raise ValueError(f"addprocs: sshflags={sshflags!r} must be strings")
    max_parallel = params.get("max_parallel", 10)
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ValueError(f"addprocs: max_parallel={max_parallel!r} must be >= 1")
    for key in ("tunnel", "multiplex"):
        if not isinstance(params.get(key, False), bool):
            raise ValueError(f"addprocs: {key}={params.get(key)!r} must be a bool")
    return _Settings(
        ssh=str(params.get("ssh") or "ssh"),
        sshflags=tuple(sshflags),
        shell=shell,
        tunnel=bool(params.get("tunnel")),
        multiplex=bool(params.get("multiplex")),
        max_parallel=max_parallel,
    )


def _ssh_program(config: WorkerConfig) -> str:
    data = config.userdata
    if isinstance(data, dict) and isinstance(data.get("ssh"), str):
        return str(data["ssh"])
    return "ssh"


# ------------------------------------------------------ multiplexing


class _ControlMaster:
    """One ``ssh -M -N`` per host, shared by the sessions to it."""

    def __init__(self, ssh: str, sshflags: list[str], destination: str) -> None:
        self.ssh = ssh
        self.sshflags = sshflags
        self.destination = destination
        self._dir = tempfile.mkdtemp(prefix="distref-ssh-")
        self.path = os.path.join(self._dir, "control")
        self._users = 0
        self._process: trio.Process | None = None
        self._lock = trio.Lock()

    def client_flags(self) -> list[str]:
        """What a session needs to go through this master."""
        return ["-o", "ControlMaster=no", "-S", self.path]

    async def acquire(self) -> None:
        """Count one more user; start the master on first use."""
        async with self._lock:
            self._users += 1
            if self._process is None:
                await self._start()

    async def _start(self) -> None:
        argv = [
            self.ssh,
            *SSH_BASE_OPTIONS,
            "-M",
            "-N",
            "-n",
            "-o",
            "ControlPersist=no",
            "-S",
            self.path,
            *self.sshflags,
            self.destination,
        ]
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._process = process
        with trio.move_on_after(current_process().worker_timeout):
            while not os.path.exists(self.path):
                if process.returncode is not None or process.poll() is not None:
                    break
                await trio.sleep(0.02)
        if not os.path.exists(self.path):
            error = await _stderr_of(process)
            await self.close()
            raise LaunchError(
                f"ssh multiplexing master for {self.destination!r} did not start: "
                f"{error}"
            )

    async def release(self) -> bool:
        """Count one user less; True when this was the last (master ended)."""
        self._users -= 1
        if self._users > 0:
            return False
        await self.close()
        return True

    async def close(self) -> None:
        """End the master ssh (our child), reap it, remove its socket folder."""
        process = self._process
        self._process = None
        if process is not None:
            if process.returncode is None:
                process.terminate()
            await _reap(process)
        with contextlib.suppress(OSError):
            os.remove(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


async def _reap(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stderr_of(process: trio.Process) -> str:
    stream = process.stderr
    if stream is None:
        return "(no output)"
    data = b""
    with trio.move_on_after(1):
        while chunk := await stream.receive_some():
            data += chunk
    return data.decode("utf-8", "replace").strip() or "(no output)"


# ------------------------------------------------------------- tunnels


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def open_tunnel(pid: int, config: WorkerConfig) -> trio.abc.Stream:
    """Reach worker ``pid`` through ``ssh -N -L``; the stream through it.

    The tunnel's ssh is a child of the master, kept in ``config.userdata``
    and ended by ``manage(..., "finalize")``.
    """
    assert config.connect_at is not None
    bind_addr, port = config.connect_at
    local = _free_local_port()
    target = f"[{bind_addr}]" if ":" in bind_addr else bind_addr
    forward = f"127.0.0.1:{local}:{target}:{port}"
    argv = [
        _ssh_program(config),
        *SSH_BASE_OPTIONS[:3],
        "-N",
        "-n",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        forward,
        *(config.sshflags or ()),
        config.host or "",
    ]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    data = config.userdata if isinstance(config.userdata, dict) else {}
    config.userdata = {**data, "tunnel": process}
    config.forward = forward
    timeout = current_process().worker_timeout
    with trio.move_on_after(timeout):
        while process.poll() is None:
            try:
                return await trio.open_tcp_stream("127.0.0.1", local)
            except OSError:
                await trio.sleep(0.05)
    error = await _stderr_of(process) if process.poll() is not None else "timed out"
    await _stop_tunnel(config)
    raise LaunchError(f"ssh tunnel to worker {pid} ({forward}) failed: {error}")


async def _stop_tunnel(config: WorkerConfig) -> None:
    data = config.userdata
    if not isinstance(data, dict):
        return
    process = data.pop("tunnel", None)
    if isinstance(process, trio.Process):
        if process.returncode is None:
            process.terminate()
        await _reap(process)
