"""Reading a starting worker's output: its address line, then its relay.

Every way of starting a real worker (a child process, ssh, srun, a worker
that dials in) ends the same: the worker writes lines, one of which is its
address ``distref_worker:<port>#<host>``.  The master reads up to that line
with upstream's three failure meanings, echoing what came before it, and
afterwards relays the rest of the output with the worker's pid in front.
Shared by the local launcher and the cluster managers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import trio

from spec.api import LaunchError

from ._config import ADDRESS_PREFIX

#: Lines read before giving up on seeing an address line (upstream's 1000).
MAX_STARTUP_LINES = 1000

#: What relayed worker output starts with (upstream's six spaces included).
WORKER_OUTPUT_PREFIX = "      From worker "

ADDRESS_LINE = re.compile(rf"^{re.escape(ADDRESS_PREFIX)}(\d+)#(.*)$")


def write_stdout(text: str) -> None:
    """Write ``text`` to the master's current ``sys.stdout`` and flush."""
    sys.stdout.write(text)
    sys.stdout.flush()


class LineReader:
    """Splits a byte stream into text lines; a broken stream counts as ended."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> str | None:
        """The next line without its newline; None once the stream ended."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode("utf-8", "replace")
            try:
                data = await self._stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line.decode("utf-8", "replace")
                return None
            self._buffer += data


def parse_address(line: str) -> tuple[str, int] | None:
    """``(host, port)`` if ``line`` is an address line, else None."""
    found = ADDRESS_LINE.match(line.strip())
    if found is None:
        return None
    return found.group(2), int(found.group(1))


async def read_address(
    reader: LineReader, timeout: float, echo: Callable[[str], None] = write_stdout
) -> tuple[str, int]:
    """Read up to the worker's address line; return ``(host, port)``.

    Lines before it are echoed with a ``From worker startup:`` prefix.
    Upstream's three failures become ``LaunchError`` s with its words: the
    output ends first, 1000 lines pass without it, or ``timeout`` seconds.
    """
    try:
        with trio.fail_after(timeout):
            for _ in range(MAX_STARTUP_LINES):
                line = await reader.readline()
                if line is None:
                    raise LaunchError(
                        "Unable to read host:port string from worker. "
                        "Launch command exited with error?"
                    )
                address = parse_address(line)
                if address is not None:
                    return address
                echo(f"\tFrom worker startup:\t{line}\n")
    except trio.TooSlowError:
        raise LaunchError(
            "Timed out waiting to read host:port string from worker "
            f"(waited {timeout:g} s; raise DISTREF_WORKER_TIMEOUT if needed)."
        ) from None
    raise LaunchError(
        "Unexpected output from worker launch command. Host:port string not found."
    )


def prefixed_line(pid: int, line: str) -> str:
    """The relayed form of ``line`` written by worker ``pid``.

    A line that already carries the prefix comes from a worker that another
    worker started (and relayed) and is passed on unchanged.
    """
    if line.startswith(WORKER_OUTPUT_PREFIX):
        return f"{line}\n"
    return f"{WORKER_OUTPUT_PREFIX}{pid}:\t{line}\n"


async def relay_lines(
    reader: LineReader, pid: int, output: Callable[[str], None] = write_stdout
) -> None:
    """Relay every further line of a worker's output until it ends."""
    while (line := await reader.readline()) is not None:
        output(prefixed_line(pid, line))
