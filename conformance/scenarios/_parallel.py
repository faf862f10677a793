"""What the pool, pmap and construct scenarios ship to other processes.

Like ``_shipped``, everything here lives at module level so that it travels
by reference, and its state is kept per process (``PerProcess``): a
scenario reads a worker's state by calling the reader *on that worker*.
Keys are fresh per scenario (``new_key``).
"""

from __future__ import annotations

import gc
import importlib
import sys
import weakref
from collections.abc import Callable
from typing import Any

import trio

from spec.api import DistributedAPI, RemoteException

from ._shipped import PerProcess, ScenarioError, record

# ------------------------------------------------- concurrency probe

_active: PerProcess[dict[str, int]] = PerProcess(dict)
_peak: PerProcess[dict[str, int]] = PerProcess(dict)
_count: PerProcess[dict[str, int]] = PerProcess(dict)


async def probe(key: str, seconds: float, x: Any) -> Any:
    """Count how many probes of ``key`` run at once in this process."""
    active, peak, count = _active.here(), _peak.here(), _count.here()
    active[key] = active.get(key, 0) + 1
    peak[key] = max(peak.get(key, 0), active[key])
    count[key] = count.get(key, 0) + 1
    try:
        await trio.sleep(seconds)
    finally:
        active[key] -= 1
    return x


def probe_stats(key: str) -> tuple[int, int]:
    """``(most probes at once, probes run)`` of ``key`` in this process."""
    return _peak.here().get(key, 0), _count.here().get(key, 0)


async def probe_whoami(
    d: DistributedAPI, key: str, seconds: float, x: Any = None
) -> int:
    """A probe that returns the pid it ran on."""
    await probe(key, seconds, x)
    return d.myid()


# ----------------------------------------------- counted shipments


_unpickled: PerProcess[dict[str, int]] = PerProcess(dict)
_alive: PerProcess[dict[str, weakref.WeakSet[Counted]]] = PerProcess(dict)


def _arrive_counted(key: str, payload: bytes) -> Counted:
    unpickled = _unpickled.here()
    unpickled[key] = unpickled.get(key, 0) + 1
    return Counted(key, payload)


class Counted:
    """A callable that counts how often it was unpickled in each process.

    It carries ``payload`` (standing for the data a closure captures).  Two
    instances with the same key compare equal but are distinct objects.
    """

    def __init__(self, key: str, payload: bytes = b"") -> None:
        self.key = key
        self.payload = payload
        _alive.here().setdefault(key, weakref.WeakSet()).add(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive_counted, (self.key, self.payload))

    def __call__(self, x: Any) -> Any:
        return (x, len(self.payload))


def unpickled(key: str) -> int:
    """How many Counted objects of ``key`` were unpickled in this process."""
    return _unpickled.here().get(key, 0)


def alive(key: str) -> int:
    """How many Counted objects of ``key`` still exist in this process."""
    gc.collect()
    return len(_alive.here().get(key, ()))


# ----------------------------------------------------- attempts


_attempts: PerProcess[dict[tuple[str, Any], int]] = PerProcess(dict)


def attempt(key: str, x: Any) -> int:
    """Count one more attempt at element ``x`` here; returns the count."""
    attempts = _attempts.here()
    n = attempts[(key, x)] = attempts.get((key, x), 0) + 1
    return n


def attempts(key: str, x: Any) -> int:
    return _attempts.here().get((key, x), 0)


def always_fail(key: str, x: Any) -> Any:
    """Count the attempt, then raise ScenarioError."""
    attempt(key, x)
    raise ScenarioError(f"always fails at {x}")


def fail_once_here(key: str, x: Any) -> Any:
    """Fail the first attempt at ``x`` in each process, then return 2x."""
    if attempt(key, x) == 1:
        raise ValueError("notfoobar")
    return 2 * x


def fail_at(bad: Any, x: Any) -> Any:
    """Return ``x``, except raise ScenarioError for ``bad``."""
    if x == bad:
        raise ScenarioError(f"failed at {x}")
    return x


def fail_at_recording(key: str, bad: Any, x: Any) -> Any:
    """Record ``x`` as processed here, and raise ScenarioError at ``bad``."""
    record(key, x)
    return fail_at(bad, x)


def fail_even(x: int) -> int:
    if x % 2 == 0:
        raise ScenarioError("foobar")
    return x


def raise_again(exc: Exception) -> Any:
    """An on_error handler that raises ScenarioError("handler")."""
    raise ScenarioError("handler") from exc


def handler_whoami(d: DistributedAPI, exc: Exception) -> tuple[int, str]:
    """An on_error handler reporting where it ran and what it received."""
    return d.myid(), type(exc).__name__


def identity(x: Any) -> Any:
    return x


def add3(a: Any, b: Any, c: Any) -> Any:
    return a + b + c


async def sleep_then(seconds: float, x: Any) -> Any:
    await trio.sleep(seconds)
    return x


# ------------------------------------------------------- the matrix


def matrix_f(
    d: DistributedAPI, key: str, transient: bool, permanent: bool, x: int
) -> Any:
    """Julia's matrix test function.

    With ``transient`` the first attempt at ``x`` in each process fails
    with "notfoobar"; with ``permanent`` every even ``x`` fails with
    "foobar"; otherwise ``(2x, myid())``.
    """
    if transient and attempt(key, x) == 1:
        raise ValueError("notfoobar")
    if permanent and x % 2 == 0:
        raise ValueError("foobar")
    return (2 * x, d.myid())


def matrix_always(d: DistributedAPI, x: int) -> Any:
    """Fails at 3, always; otherwise ``(2x, myid())``."""
    if x == 3:
        raise ScenarioError("always")
    return (2 * x, d.myid())


def matrix_on_error(exc: Exception) -> Any:
    """True for "foobar"; any other error is raised again."""
    if str(exc) == "foobar":
        return True
    raise exc


def matrix_check(state: Any, exc: Exception) -> tuple[Any, bool]:
    """Retry errors whose message ends with "foobar"."""
    return state, str(exc).endswith("foobar")


# ------------------------------------------------------- pools


async def take_from(pool: Any) -> int:
    """Take a member of ``pool`` from wherever this runs."""
    pid: int = await pool.take()
    return pid


async def put_into(pool: Any, pid: int) -> None:
    await pool.put(pid)


async def wait_on(pool: Any) -> str:
    await pool.wait()
    return "free"


async def pool_view(pool: Any) -> tuple[list[int], int, bool]:
    """``(workers, length, isready)`` of a pool, seen from here."""
    return await pool.workers(), await pool.length(), await pool.isready()


async def default_view(d: DistributedAPI) -> list[int]:
    """``workers(default_worker_pool())`` seen from here."""
    members: list[int] = await d.default_worker_pool().workers()
    return members


async def pmap_here(
    d: DistributedAPI, f: Callable[..., Any], items: list[Any], pool: Any = None
) -> list[Any]:
    """Run a pmap from wherever this runs."""
    return await d.pmap(f, items, pool=pool)


async def nested_outer(d: DistributedAPI, j: int) -> list[Any]:
    """Field report BR-05's outer function: a pmap inside a pmap."""
    return await d.pmap(square, [1, 2])


def square(x: int) -> int:
    return x * x


# ----------------------------------------------------- globals


def read_global(name: str, module: str = "__main__") -> Any:
    """The global ``name`` of ``module`` here; NameError when undefined."""
    target = sys.modules.get(module) or importlib.import_module(module)
    try:
        return getattr(target, name)
    except AttributeError:
        raise NameError(f"name {name!r} is not defined in {module}") from None


# ------------------------------------------------------------ misc


def recorded_items(key: str) -> list[Any]:
    from ._shipped import records

    return records(key)


def record_and_return(key: str, x: Any) -> Any:
    record(key, x)
    return x


def record_whoami(d: DistributedAPI, key: str, x: Any) -> Any:
    record(key, (x, d.myid()))
    return [(x, d.myid())]


def record_pair(key: str, a: Any, b: Any) -> Any:
    """A reducer that records each call where it runs."""
    record(key, (a, b))
    return a + b


def concat(a: Any, b: Any) -> Any:
    return a + b


def append_to(items: list[Any], x: Any) -> list[Any]:
    items.append(x)
    return [x]


def as_list(x: Any) -> list[Any]:
    return [x]


def remote_exception_of(exc: BaseException) -> RemoteException | None:
    return exc if isinstance(exc, RemoteException) else None


def leaves(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (itself if not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(leaves(inner))
        return found
    return [exc]


def root_cause(exc: BaseException) -> BaseException:
    """The exception f raised: unwrapped from RemoteException if need be."""
    return exc.exception if isinstance(exc, RemoteException) else exc
