"""Entry point of a real worker process: ``python -m ref.worker``.

Protocol with the launcher: the cookie arrives as the first line on stdin
(never on the command line, where other users could read it) unless
``--cookie`` gives it; the worker binds ``--bind-to HOST[:PORT]`` (loopback
by default, port 0 meaning the first free one from 9000 + OS pid mod 1000),
prints exactly one line ``distref_worker:<port>#<host>`` on stdout and
flushes it, then serves.  It exits when the master asks, when its link to
the master is lost, or when its stdin pipe reaches end of file (the
launcher has gone).  SIGINT interrupts the calls it is running.  Unlike
``start_worker``'s defaults, stdin stays open and stderr apart from stdout:
the local launcher merges the two streams itself, and keeps stdin open as
the worker's sign that it is still there.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ._transports import ListenError, start_worker


def parse_bind_to(text: str) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (IPv6 hosts in brackets) into host and port."""
    host, port = text, "0"
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--bind-to {text!r}: the port must be 0..65535")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ref.worker")
    parser.add_argument(
        "--bind-to",
        default="127.0.0.1",
        metavar="HOST[:PORT]",
        help="address (and port) to listen on",
    )
    parser.add_argument(
        "--cookie",
        default=None,
        help="the cluster cookie (default: the first line of stdin)",
    )
    args = parser.parse_args(argv)
    try:
        host, port = parse_bind_to(args.bind_to)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        # The launcher reads stdout for the address line and merges stderr
        # into it itself, and its stdin pipe is how a worker notices that
        # the launcher has gone: both stay as the launcher made them.
        start_worker(
            cookie=args.cookie,
            bind_to=host,
            port=port,
            close_stdin=False,
            stderr_to_stdout=False,
        )
    except (ValueError, ListenError) as exc:
        sys.stderr.write(f"ref.worker: {exc}\n")
        return 2
    except SystemExit as done:
        return int(done.code or 0)


if __name__ == "__main__":
    sys.exit(main())
