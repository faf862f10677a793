"""Real daemons for the cluster-manager tests: sshd, network namespaces, Slurm.

Recipes from launchers.md, driven from Python.  Every daemon runs in the
foreground as a child of the test process (``sshd -D``, ``munged -F``,
``slurmctld -D``, ``slurmd -D``), so its pid is the ``Popen``'s; fixtures stop
them by pid (SIGTERM, a bounded wait, then SIGKILL) and reap them.  Nothing
listens anywhere but on loopback or inside namespaces the tests create, and
a test that dials a namespace address first checks that the route goes
through its own bridge (``check_route``).

Each ``start_*`` function either returns a running service or raises
``Unavailable`` with the exact reason, which the fixtures turn into a skip.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SLURM_DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")


class Unavailable(Exception):
    """The machine cannot run this daemon; the message says exactly why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bound, read, released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop(processes: list[subprocess.Popen[bytes]], grace: float = 10.0) -> list[str]:
    """Stop each process by its pid, in order: SIGTERM, wait, then SIGKILL.

    Returns a note for every process that needed SIGKILL.
    """
    notes = []
    for process in processes:
        if process.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            notes.append(f"pid {process.pid} ({process.args!r}) ignored SIGTERM")
            process.kill()
            process.wait(timeout=grace)
    return notes


def wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """Wait (10 s at most) until ``text`` appears in ``path``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    log = path.read_text(errors="replace") if path.exists() else "(no log)"
    raise Unavailable(f"{process.args[0]} did not report {text!r}: {log.strip()}")


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a short setup command, failing loudly."""
    return subprocess.run(
        argv,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,  # type: ignore[arg-type]  # subprocess's overloads
    )


# ------------------------------------------------------------------- ssh


def _keygen(path: Path) -> None:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)])


@dataclass
class Keys:
    """A host key and a client key pair in one folder, for sshd and ssh."""

    folder: Path

    @property
    def host_key(self) -> Path:
        return self.folder / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.folder / "client_key"

    @property
    def authorized_keys(self) -> Path:
        return self.folder / "authorized_keys"

    def create(self) -> None:
        if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
            raise Unavailable("the OpenSSH client (ssh, ssh-keygen) is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o711)  # sshd reads authorized_keys as the login user
        if not self.host_key.exists():
            _keygen(self.host_key)
            _keygen(self.client_key)
        shutil.copy(self.folder / "client_key.pub", self.authorized_keys)
        self.authorized_keys.chmod(0o644)

    def sshflags(self) -> list[str]:
        """Client options: this key only, no host-key prompts, no agent."""
        return [
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    def sshd_config(self, path: Path, port: int, addresses: list[str]) -> None:
        root = os.geteuid() == 0
        lines = [f"Port {port}"]
        lines += [f"ListenAddress {a}" for a in addresses]
        lines += [
            f"HostKey {self.host_key}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password" if root else "",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
        ]
        path.write_text("\n".join(line for line in lines if line) + "\n")


@dataclass
class SshServer:
    """An sshd on loopback, started and stopped by a test fixture."""

    keys: Keys
    port: int
    process: subprocess.Popen[bytes]
    user: str = field(default_factory=getpass.getuser)

    def spec(self, host: str = "127.0.0.1") -> str:
        """The machine spec that reaches this sshd."""
        shown = f"[{host}]" if ":" in host else host
        return f"{self.user}@{shown}:{self.port}"

    def sshflags(self) -> list[str]:
        return self.keys.sshflags()


def sshd_unavailable() -> str | None:
    """Why no sshd can run here, or None."""
    if not os.path.exists(SSHD):
        return (
            f"sshd is not installed ({SSHD} missing; .ci/run installs openssh-server)"
        )
    if shutil.which("ssh") is None:
        return "the ssh client is not installed"
    return None


def start_sshd(folder: Path, addresses: list[str]) -> SshServer:
    """sshd on a free high port of ``addresses`` (loopback), by key only."""
    reason = sshd_unavailable()
    if reason:
        raise Unavailable(reason)
    keys = Keys(folder)
    keys.create()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir
    port = free_port(addresses[0])
    config = folder / "sshd_config"
    keys.sshd_config(config, port, addresses)
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True)
    if check.returncode != 0:
        raise Unavailable(f"sshd rejects its test config: {check.stderr.decode()}")
    log = folder / "sshd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out
        )
    try:
        wait_for_text(log, f"Server listening on {addresses[0]}", process)
    except Unavailable:
        stop([process])
        raise
    return SshServer(keys, port, process)


# ------------------------------------------------------ network namespaces


@dataclass
class NetnsHosts:
    """Fake hosts: namespaces on a bridge, each with its own sshd."""

    bridge: str
    names: list[str]
    addresses: list[str]
    keys: Keys
    sshds: list[subprocess.Popen[bytes]]

    def spec(self, index: int) -> str:
        return f"{getpass.getuser()}@{self.addresses[index]}"


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None (tries one)."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "the ip or nsenter command is missing"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"drprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def check_route(address: str, bridge: str) -> None:
    """Fail unless traffic to ``address`` would leave through ``bridge``."""
    route = run(["ip", "route", "get", address]).stdout
    if f"dev {bridge} " not in route + " ":
        raise AssertionError(
            f"the route to {address} does not go through {bridge}: {route.strip()}"
        )


_NETNS_CALLS = itertools.count()


def start_netns_hosts(folder: Path, count: int, subnet: str) -> NetnsHosts:
    """``count`` namespace hosts on a new bridge; ``subnet`` like 10.213.9.

    The root namespace gets ``<subnet>.1``, host i ``<subnet>.(10+i)``, each
    with its own hostname (``host<i>``) and an sshd on port 22 inside its
    namespace only.  On failure everything made so far is removed again.
    """
    reason = netns_unavailable() or sshd_unavailable()
    if reason:
        raise Unavailable(reason)
    # Names differ per call, not only per process: a namespace is deleted
    # asynchronously, so the veth ends of the previous test's hosts may
    # still exist for a moment (interface names stay within 15 characters).
    tag = f"{os.getpid() % 100000}{next(_NETNS_CALLS) % 100}"
    hosts = NetnsHosts(f"drbr{tag}", [], [], Keys(folder), [])
    hosts.keys.create()
    Path("/run/sshd").mkdir(exist_ok=True)
    try:
        run(["ip", "link", "add", hosts.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{subnet}.1/24", "dev", hosts.bridge])
        run(["ip", "link", "set", hosts.bridge, "up"])
        for i in range(1, count + 1):
            _add_host(hosts, folder, tag, i, subnet)
        for i, process in enumerate(hosts.sshds, start=1):
            wait_for_text(folder / f"sshd_h{i}.log", "Server listening", process)
    except BaseException:
        stop_netns_hosts(hosts)
        raise
    return hosts


def _add_host(hosts: NetnsHosts, folder: Path, tag: str, i: int, subnet: str) -> None:
    name = f"drh{tag}x{i}"
    outer, inner = f"drb{tag}x{i}", f"dre{tag}x{i}"
    address = f"{subnet}.{10 + i}"
    run(["ip", "netns", "add", name])
    hosts.names.append(name)
    run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
    run(["ip", "link", "set", outer, "master", hosts.bridge, "up"])
    run(["ip", "link", "set", inner, "netns", name])
    run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", inner])
    run(["ip", "-n", name, "link", "set", inner, "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    hosts.addresses.append(address)
    config = folder / f"sshd_h{i}.conf"
    hosts.keys.sshd_config(config, 22, [address])
    log = folder / f"sshd_h{i}.log"
    with log.open("wb") as out:
        # nsenter and unshare without --fork exec: the pid is sshd's own.
        hosts.sshds.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{name}",
                    "unshare",
                    "--uts",
                    "sh",
                    "-c",
                    f"hostname host{i}; exec {SSHD} -D -e -f {config}",
                ],
                stdout=out,
                stderr=out,
            )
        )


def stop_netns_hosts(hosts: NetnsHosts) -> None:
    """Stop the sshds by pid, then delete the namespaces and the bridge."""
    stop(hosts.sshds)
    for name in hosts.names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", hosts.bridge], capture_output=True)


# ------------------------------------------------------------------- Slurm


@dataclass
class SlurmCluster:
    """munged, slurmctld and slurmd for one node, on loopback."""

    folder: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def env(self) -> dict[str, str]:
        """The environment the Slurm commands need (``SLURM_CONF``)."""
        return {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}


def slurm_unavailable() -> str | None:
    missing = [d for d in SLURM_DAEMONS if not os.path.exists(d)]
    if missing:
        return (
            f"Slurm is not installed ({', '.join(missing)} missing; .ci/run "
            "installs slurm-wlm and munge)"
        )
    if os.geteuid() != 0:
        return "the single-node Slurm of these tests runs its daemons as root"
    for command in ("srun", "salloc", "sbatch", "sinfo", "setpriv"):
        if shutil.which(command) is None:
            return f"{command} is not installed"
    return None


_SLURM_CONF = """\
ClusterName=distref
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
MailProg=/bin/true
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pidfile
SlurmdPidFile={d}/slurmd.pidfile
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
MinJobAge=60
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(folder: Path) -> SlurmCluster:
    """A one-node Slurm on 127.0.0.1, ports chosen free; stops on failure."""
    reason = slurm_unavailable()
    if reason:
        raise Unavailable(reason)
    resolved = socket.gethostbyname(socket.gethostname())
    if not resolved.startswith("127."):
        # NoCtldInAddrAny binds to the hostname's address: off loopback here.
        raise Unavailable(
            f"this host's name resolves to {resolved}, not loopback; the test "
            "Slurm would listen there"
        )
    for sub in ("state", "spool", "log", "fakecg/systemd"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(folder, [])
    try:
        _start_munge(cluster)
        text = _SLURM_CONF.format(
            d=folder,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            cpus=os.cpu_count() or 1,
        )
        (folder / "slurm.conf").write_text(text)
        # slurmd 22.05 always loads a cgroup plugin: give it a dummy tree.
        (folder / "cgroup.conf").write_text(
            f"CgroupPlugin=cgroup/v1\nCgroupMountpoint={folder}/fakecg\n"
            "CgroupAutomount=no\n"
        )
        for argv, name in (
            (["/usr/sbin/slurmctld", "-D", "-i"], "slurmctld"),
            (["/usr/sbin/slurmd", "-D"], "slurmd"),
        ):
            with (folder / "log" / f"{name}.out").open("wb") as out:
                cluster.processes.append(
                    subprocess.Popen(argv, stdout=out, stderr=out, env=cluster.env)
                )
        _wait_idle(cluster)
    except BaseException:
        stop_slurm(cluster)
        raise
    return cluster


def _start_munge(cluster: SlurmCluster) -> None:
    munge_run = Path("/run/munge")
    munge_run.mkdir(exist_ok=True)
    shutil.chown(munge_run, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        run(
            [
                "setpriv",
                "--reuid=munge",
                "--regid=munge",
                "--init-groups",
                "--",
                "mungekey",
                "--create",
            ]
        )
    out = (cluster.folder / "log" / "munged.out").open("wb")
    with out:
        cluster.processes.append(
            subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=munge",
                    "--regid=munge",
                    "--init-groups",
                    "--",
                    "/usr/sbin/munged",
                    "-F",
                ],
                stdout=out,
                stderr=out,
            )
        )
    deadline = time.monotonic() + 10
    while not (munge_run / "munge.socket.2").exists():
        if time.monotonic() > deadline or cluster.processes[-1].poll() is not None:
            log = (cluster.folder / "log" / "munged.out").read_text()
            raise Unavailable(f"munged did not start: {log.strip()}")
        time.sleep(0.05)


def _wait_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + 20
    state = ""
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise Unavailable(_slurm_failure(cluster, f"{process.args[0]} exited"))
        done = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"],
            capture_output=True,
            text=True,
            env=cluster.env,
        )
        state = done.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.1)
    raise Unavailable(_slurm_failure(cluster, f"the node stayed {state!r}"))


def _slurm_failure(cluster: SlurmCluster, what: str) -> str:
    logs = []
    for name in ("slurmctld.out", "slurmd.out", "slurmd.log", "slurmctld.log"):
        path = cluster.folder / "log" / name
        if path.exists():
            logs.append(f"{name}: {path.read_text(errors='replace')[-600:]}")
    return f"the test Slurm could not start ({what}); " + " | ".join(logs)


def stop_slurm(cluster: SlurmCluster) -> None:
    """slurmd, then slurmctld, then munged (pitfall: slurmd needs the
    controller to honour SIGTERM), each by pid."""
    stop(list(reversed(cluster.processes)))


# --------------------------------------------------------- leftover workers


#: What the command line of a distref worker process contains.
WORKER_MODULES = (b"ref.worker", b"ref.elastic", b"ref.managers.slurm_task")

#: The environment variable that marks the workers of one test.
TAG_VARIABLE = "DISTREF_TEST_TAG"


def worker_processes(tag: str) -> dict[int, bytes]:
    """Live distref workers carrying ``TAG_VARIABLE=tag`` in their environment.

    The tag finds a test's workers wherever they run (children of ssh
    sessions, of srun, orphans) and ignores other tests' running meanwhile.
    """
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if not any(name in cmdline for name in WORKER_MODULES):
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if state[0] not in ("Z", "X") and marker in environ:
            found[int(entry)] = cmdline
    return found


def assert_no_workers(tag: str, bound: float = 15.0) -> None:
    """Fail if workers tagged ``tag`` are still running after ``bound`` s.

    Survivors are killed (by pid) before the failure is reported.
    """
    deadline = time.monotonic() + bound
    while True:
        left = worker_processes(tag)
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"worker processes left running: {left}")
        time.sleep(0.1)
