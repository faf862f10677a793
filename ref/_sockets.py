"""The TCP connections an OS process on this machine holds, read from /proc.

``probes.connections`` must report the connections that really exist, not
the runtime's idea of its links, so under ``ref`` it reads the kernel's
tables: ``/proc/<pid>/fd`` says which socket inodes a process holds open,
``/proc/<pid>/net/tcp`` and ``tcp6`` give each socket's addresses and
state.  A connected socket whose local port is one the process listens on
was accepted; any other one it dialled.  The process at the other end is
whichever process of the cluster holds the socket with the two addresses
swapped.

Linux only, like the rest of ``ref``'s process handling; a process on
another machine cannot be looked at this way, and is refused.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from spec.api import HeldConnection

__all__ = ["os_connections"]

Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]

# The kernel's TCP states (include/net/tcp_states.h) that matter here.
_LISTEN = 0x0A
# Sockets in these states have no live connection behind them any more.
_GONE = frozenset({0x07, 0x06})  # CLOSE, TIME_WAIT


class _Entry(NamedTuple):
    local: Endpoint
    remote: Endpoint
    state: int
    inode: int


def os_connections(
    ospid: int, listening: tuple[str, int] | None, cluster: Mapping[int, int]
) -> list[HeldConnection]:
    """The TCP connections OS process ``ospid`` holds; see the module doc."""
    mine = _socket_inodes(ospid)
    entries = list(_tcp_table(ospid))
    ports = {e.local for e in entries if e.state == _LISTEN and e.inode in mine}
    if listening is not None and not any(p == listening[1] for _, p in ports):
        raise ProcessLookupError(
            f"OS process {ospid} does not listen on port {listening[1]}: the "
            "process meant does not run on this machine, or has exited"
        )

    owners: dict[int, int] = {}
    for other in cluster:
        for inode in _socket_inodes(other, missing_ok=True):
            owners.setdefault(inode, other)
    by_ends = {(e.local, e.remote): e.inode for e in entries if e.state != _LISTEN}

    held: list[HeldConnection] = []
    for entry in entries:
        if entry.inode not in mine or entry.state == _LISTEN or entry.state in _GONE:
            continue
        accepted = any(
            port == entry.local[1] and (host.is_unspecified or host == entry.local[0])
            for host, port in ports
        )
        theirs = by_ends.get((entry.remote, entry.local))
        owner = owners.get(theirs) if theirs is not None else None
        peer = cluster.get(owner) if owner is not None else None
        ends = sorted(f"{host}:{port}" for host, port in (entry.local, entry.remote))
        held.append(HeldConnection(peer, not accepted, "tcp " + " ".join(ends)))
    return held


def _socket_inodes(ospid: int, *, missing_ok: bool = False) -> set[int]:
    """The inodes of the sockets OS process ``ospid`` holds open."""
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{ospid}/fd")
    except FileNotFoundError:
        if missing_ok:
            return inodes
        raise ProcessLookupError(
            f"no OS process {ospid} on this machine (it has exited, or runs elsewhere)"
        ) from None
    for name in names:
        try:
            target = os.readlink(f"/proc/{ospid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _tcp_table(ospid: int) -> Iterator[_Entry]:
    """Every TCP socket of ``ospid``'s network namespace."""
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{ospid}/net/{name}").read_text().splitlines()
        except FileNotFoundError:
            continue  # no IPv6 here, say
        for line in lines[1:]:
            fields = line.split()
            yield _Entry(
                _endpoint(fields[1]),
                _endpoint(fields[2]),
                int(fields[3], 16),
                int(fields[9]),
            )


def _endpoint(text: str) -> Endpoint:
    """Decode the kernel's ``ADDRESS:PORT`` hex (each 32-bit word in host order)."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    # The words are printed as the host's integers: undo that word by word.
    ordered = b"".join(
        int.from_bytes(raw[i : i + 4], sys.byteorder).to_bytes(4)
        for i in range(0, len(raw), 4)
    )
    host = ipaddress.ip_address(ordered)
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        # An IPv6 socket talking to an IPv4 peer: compare as IPv4.
        return host.ipv4_mapped, int(port, 16)
    return host, int(port, 16)
