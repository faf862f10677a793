"""A worker that joins a cluster by dialling its master: ``python -m ref.elastic``.

Usage::

    python -m ref.elastic HOST:PORT [--cookie-file FILE] [--bind-to ADDR]

``HOST:PORT`` is where the master's ``ElasticManager`` listens (IPv6 in
brackets).  The cluster cookie comes from ``--cookie-file`` or else from the
first line of stdin; never from the command line, where other users could
read it.  The worker listens for the master (and its peers) on ``--bind-to``,
by default the local address that routes to the master, dials the master,
proves the cookie, sends its address line and serves.  It exits when told
to, when its master link is lost, or when the dialled connection closes
(the master refused it, removed it, or is gone).
"""

from __future__ import annotations

import argparse
import functools
import logging
import socket
import sys
from collections.abc import Callable

import trio

from spec.api import COOKIE_LENGTH

from ._config import ADDRESS_PREFIX
from ._config import worker_timeout as configured_worker_timeout
from ._context import set_current
from ._process import Process
from ._seams import TcpTransport, Transport
from ._worker import serve_worker
from .protocol.wire import PROTOCOL_VERSION, pad_version

log = logging.getLogger("ref")


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as a pair; ValueError when malformed."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def route_address(host: str, port: int) -> str:
    """The local address this machine would use to reach ``host:port``.

    A UDP socket is "connected" (which sends nothing) and asked for its own
    address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


async def serve_elastic_worker(
    *,
    cookie: str,
    master: tuple[str, int],
    bind_to: str,
    transport: Transport | None = None,
    worker_timeout: float | None = None,
    started: Callable[[Process], None] | None = None,
) -> int:
    """Dial the master at ``master``, join its cluster, serve; the exit status.

    ``transport`` carries both the dialled connection and the worker's own
    listener (TCP by default), so a simulated worker can run this too.
    """
    if not cookie.isascii() or len(cookie) > COOKIE_LENGTH:
        raise ValueError("the cookie must be at most 16 ASCII characters")
    padded = cookie.ljust(COOKIE_LENGTH)
    transport = transport or TcpTransport()
    timeout = configured_worker_timeout() if worker_timeout is None else worker_timeout
    stream = await transport.connect(*master)
    await stream.send_all(padded.encode("ascii") + pad_version(PROTOCOL_VERSION))

    procs: list[Process] = []
    address: list[str] = []
    announced = trio.Event()

    def on_start(proc: Process) -> None:
        procs.append(proc)
        set_current(proc)
        if started is not None:
            started(proc)

    def announce(host: str, port: int) -> None:
        address.append(f"{ADDRESS_PREFIX}{port}#{host}\n")
        announced.set()

    async def send_address() -> None:
        await announced.wait()
        await stream.send_all(address[0].encode("ascii"))

    async def watch_master() -> None:
        # The master never writes here: any end of the stream means it went.
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        if procs and not procs[0].joined_master.is_set():
            log.error("the master closed the connection (refused the cookie?)")
        if procs:
            procs[0].stop(1 if not procs[0].stopped.is_set() else procs[0].exit_code)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send_address)
        nursery.start_soon(watch_master)
        code = await serve_worker(
            cookie=padded,
            transport=transport,
            host=bind_to,
            announce=announce,
            worker_timeout=timeout,
            started=on_start,
        )
        nursery.cancel_scope.cancel()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ref.elastic")
    parser.add_argument("master", metavar="HOST:PORT", help="where the master listens")
    parser.add_argument(
        "--cookie-file",
        help="file whose first line is the cluster cookie (default: stdin)",
    )
    parser.add_argument(
        "--bind-to",
        help="address to listen on (default: the one that routes to the master)",
    )
    args = parser.parse_args(argv)
    try:
        master = split_address(args.master)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    # The cookie is read first, so a bad cookie file stops the worker before
    # it looks for a route to the master or dials it.
    if args.cookie_file:
        try:
            with open(args.cookie_file, encoding="ascii") as source:
                cookie = source.readline().rstrip("\n")
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            sys.stderr.write(
                f"ref.elastic: cannot read --cookie-file {args.cookie_file}: {reason}\n"
            )
            return 2
    else:
        cookie = sys.stdin.readline().rstrip("\n")
    bind_to = args.bind_to or route_address(*master)
    try:
        return trio.run(
            functools.partial(
                serve_elastic_worker, cookie=cookie, master=master, bind_to=bind_to
            )
        )
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ref.elastic: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
