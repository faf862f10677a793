"""``pmap``: a parallel map over worker pools, with batching and retries.

Mirrors Julia's ``pmap.jl`` (``pmap``, ``wrap_on_error``, ``wrap_retry``,
``wrap_batch``, ``process_batch_errors!``) and Base's ``asyncmap``,
``retry`` and ``ExponentialBackOff``.  Theory of operation:

* Up to ``nworkers(pool)`` caller tasks (at least one) pull elements from
  the zipped inputs, in order, and store each result at its input index,
  so results come back in input order whatever order they finish in.
* ``batch_size == 1``: each element is one ``remotecall_fetch`` on a pool
  member.  Composition, inside out: ``on_error`` wraps ``f`` *on the
  worker* (it sees the raw exception); then the remote call; then, with
  ``retry_delays``, a retry loop on the caller that sees exceptions
  unwrapped from ``RemoteException``.  So on_error runs before any retry,
  and an element whose on_error returned is not retried.
* ``batch_size > 1``: each request carries up to ``batch_size`` elements,
  which the worker runs concurrently.  With a handler, failures come back
  per element as ``BatchProcessingError`` values (a failed request fails
  every element it carried); afterwards they are retried one by one with
  the delays after the first, or given to ``on_error`` on the caller, or
  raised together as an ExceptionGroup.
* ``distributed=False`` (or a pool that is empty or holds only the
  caller) runs ``f`` in tasks of the calling process, batch size 1.

Beyond Julia (field report BR-01): when the worker running an element
dies, the ``ProcessExitedException`` never reaches the worker-side
on_error, so the caller gives it to ``on_error`` itself, after any
retries were spent.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from typing import Any, Final, TextIO

import trio

from spec.api import ProcessExitedException, RemoteException, WorkerPoolAPI

from ._context import current_process
from ._pools import CachingPool, call_on_pool, replaced_default

log = logging.getLogger("ref")


async def _call(f: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Call a plain or async function."""
    result = f(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


# ------------------------------------------------------------- delays


class ExponentialBackOff:
    """Delays that grow by ``factor`` up to ``max_delay``: Base's iterator.

    Iterating yields ``n`` delays in seconds: first ``min(first_delay,
    max_delay)``, then each one the previous times ``factor``, scaled by a
    random factor within ``1 ± jitter``, and capped at ``max_delay``.
    Every iteration draws fresh jitter; pass ``rng`` for repeatable draws.
    """

    def __init__(
        self,
        n: int = 1,
        first_delay: float = 0.05,
        max_delay: float = 10.0,
        factor: float = 5.0,
        jitter: float = 0.1,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"ExponentialBackOff: n={n!r} must be an int >= 0")
        for name, value in (
            ("first_delay", first_delay),
            ("max_delay", max_delay),
            ("factor", factor),
        ):
            if not value >= 0:
                raise ValueError(f"ExponentialBackOff: {name}={value!r} must be >= 0")
        if not 0 <= jitter <= 1:
            raise ValueError(
                f"ExponentialBackOff: jitter={jitter!r} must be between 0 and 1"
            )
        self.n = n
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return (
            f"ExponentialBackOff(n={self.n}, first_delay={self.first_delay}, "
            f"max_delay={self.max_delay}, factor={self.factor}, "
            f"jitter={self.jitter})"
        )

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[float]:
        delay = min(self.first_delay, self.max_delay)
        for _ in range(self.n):
            yield delay
            spread = 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
            delay = min(self.max_delay, delay * self.factor * spread)


_END: Final = object()


class _Replay:
    """Shares one pass over a one-shot iterator among many readers."""

    def __init__(self, source: Iterator[float]) -> None:
        self._source = source
        self._seen: list[float] = []

    def read(self, start: int) -> Iterator[float]:
        i = start
        while True:
            while i >= len(self._seen):
                item = next(self._source, _END)
                if item is _END:
                    return
                self._seen.append(item)  # type: ignore[arg-type]  # not _END
            yield self._seen[i]
            i += 1


class Delays:
    """``retry_delays`` made re-iterable: every element retries afresh.

    A collection (or ExponentialBackOff) is simply iterated again; a
    one-shot iterator, which may be infinite, is read lazily once and
    replayed.  ``rest()`` is the same delays without the first.
    """

    def __init__(self, source: Iterable[float], skip: int = 0) -> None:
        try:
            iterator = iter(source)
        except TypeError:
            raise TypeError(
                f"pmap: retry_delays={source!r} must be an iterable of seconds"
            ) from None
        self._source: Iterable[float] | _Replay = source
        if iterator is source:
            self._source = _Replay(iterator)
        self._skip = skip

    def fresh(self) -> Iterator[float]:
        if isinstance(self._source, _Replay):
            return self._source.read(self._skip)
        return itertools.islice(iter(self._source), self._skip, None)

    def __bool__(self) -> bool:
        return next(self.fresh(), _END) is not _END

    def rest(self) -> Delays:
        rest = Delays.__new__(Delays)
        rest._source = self._source
        rest._skip = self._skip + 1
        return rest


def _unwrap(exc: RemoteException) -> BaseException:
    """The exception f raised, noted with where it was raised."""
    inner = exc.exception
    note = f"(raised on process {exc.pid})"
    if exc.remote_traceback:
        note = f"{note}\n{exc.remote_traceback.rstrip()}"
    inner.add_note(note)
    return inner


async def _unwrapped(attempt: Callable[[], Any]) -> Any:
    try:
        return await attempt()
    except RemoteException as exc:
        raise _unwrap(exc) from None


def _verdict(state: Any, answer: Any) -> tuple[Any, bool]:
    """Read retry_check's answer: a bool, or a (state, bool) pair."""
    if isinstance(answer, bool):
        return state, answer
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], bool):
        return answer[0], answer[1]
    raise TypeError(
        f"pmap: retry_check returned {answer!r}; it must return a bool or a "
        "(state, bool) pair"
    )


async def _ask(check: Callable[..., Any], state: Any, exc: BaseException) -> Any:
    answer = check(state, exc)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


async def retrying(
    attempt: Callable[[], Any],
    delays: Delays,
    check: Callable[..., Any] | None,
) -> Any:
    """Base's ``retry``: one attempt per delay, then a last one.

    After a failed attempt ``check(state, exc)`` (if given) decides whether
    to go on; ``state`` is the iterator of the delays still unused, and a
    ``(state, bool)`` answer replaces it.  Exceptions are unwrapped from
    RemoteException both for ``check`` and when finally raised.
    """
    remaining: Iterator[float] = delays.fresh()
    while True:
        delay = next(remaining, _END)
        if delay is _END:
            return await _unwrapped(attempt)
        # Checked as drawn: the delays may be lazy or endless.
        _check_delay(delay)
        try:
            return await _unwrapped(attempt)
        except Exception as exc:
            if check is not None:
                state, again = _verdict(remaining, await _ask(check, remaining, exc))
                if not again:
                    raise
                remaining = iter(state)
        await trio.sleep(delay)  # type: ignore[arg-type]  # not _END


def _check_delay(delay: object) -> None:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(
            f"pmap: retry_delays gave {delay!r}; each delay must be a number of seconds"
        )
    if not delay >= 0:  # NaN too
        raise ValueError(
            f"pmap: retry_delays gave {delay!r}; each delay must be a number of "
            "seconds >= 0"
        )


# ------------------------------------------------------- worker side


class OnError:
    """``f`` with errors turned into ``handler(error)``; runs on the worker."""

    def __init__(self, f: Callable[..., Any], handler: Callable[..., Any]) -> None:
        self.f = f
        self.handler = handler

    async def __call__(self, *args: Any) -> Any:
        try:
            return await _call(self.f, args)
        except Exception as exc:
            return await _call(self.handler, (exc,))


class BatchProcessingError(Exception):
    """An element of a batch failed: its arguments and the error.

    A value, not raised: with a handler configured, a batch comes back as a
    list in which failed elements are these.
    """

    def __init__(self, data: tuple[Any, ...], ex: BaseException) -> None:
        super().__init__(data, ex)
        self.data = data
        self.ex = ex

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.data, self.ex))


class BatchRunner:
    """Runs one batch on a worker, concurrently.

    A plain function cannot overlap with anything, so its calls run in
    order, inline; an async function's calls each get their own task.
    With ``wrap`` a failing element becomes a BatchProcessingError value;
    without, the first failure cancels the batch and is raised.
    """

    def __init__(self, f: Callable[..., Any], wrap: bool) -> None:
        self.f = f
        self.wrap = wrap

    async def __call__(self, batch: list[tuple[Any, ...]]) -> list[Any]:
        results: list[Any] = [None] * len(batch)
        waiting: list[tuple[int, tuple[Any, ...], Awaitable[Any]]] = []
        try:
            for i, args in enumerate(batch):
                try:
                    value = self.f(*args)
                except Exception as exc:
                    results[i] = self._failed(args, exc)
                    continue
                if inspect.isawaitable(value):
                    waiting.append((i, args, value))
                else:
                    results[i] = value
        except BaseException:
            for _, _, pending in waiting:
                getattr(pending, "close", lambda: None)()
            raise

        if waiting:
            await self._gather(waiting, results)
        else:
            await trio.lowlevel.checkpoint()
        return results

    def _failed(self, args: tuple[Any, ...], exc: Exception) -> BatchProcessingError:
        if not self.wrap:
            raise exc
        return BatchProcessingError(args, exc)

    async def _gather(
        self,
        waiting: list[tuple[int, tuple[Any, ...], Awaitable[Any]]],
        results: list[Any],
    ) -> None:
        failures: list[Exception] = []

        async def one(i: int, args: tuple[Any, ...], pending: Awaitable[Any]) -> None:
            try:
                results[i] = await pending
            except Exception as exc:
                if self.wrap:
                    results[i] = BatchProcessingError(args, exc)
                elif not failures:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, args, pending in waiting:
                nursery.start_soon(one, i, args, pending)
        if failures:
            raise failures[0]


# ------------------------------------------------------------ progress


class Progress:
    """Counts finished elements and reports them.

    ``report`` is None (silent), or called as ``report(done, total)``
    (``total`` None when the inputs have no length).
    """

    def __init__(
        self, report: Callable[[int, int | None], None] | None, total: int | None
    ) -> None:
        self.report = report
        self.total = total
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.report is not None and n:
            self.report(self.done, self.total)

    def close(self) -> None:
        finish = getattr(self.report, "close", None)
        if callable(finish):
            finish()


class TerminalBar:
    """A one-line progress bar, redrawn at most ten times a second.

    It writes only when ``stream`` is a terminal; otherwise it is silent.
    """

    WIDTH: Final = 30
    INTERVAL: Final = 0.1

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.active = stream.isatty()
        self._last = -self.INTERVAL
        self._drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if not self.active:
            return
        now = trio.current_time()
        if now - self._last < self.INTERVAL and done != total:
            return
        self._last = now
        self._drawn = True
        if total:
            filled = self.WIDTH * done // total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self.stream.write(f"\rpmap [{bar}] {done}/{total}")
        else:
            self.stream.write(f"\rpmap {done} done")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _reporter(progress: Any) -> Callable[[int, int | None], None] | None:
    if progress is None or progress is False:
        return None
    if progress is True:
        return TerminalBar(sys.stderr)
    if callable(progress):
        return progress  # type: ignore[no-any-return]  # user's callback
    raise TypeError(
        f"pmap: progress={progress!r} must be a bool or a callable (done, total)"
    )


def _total(iterables: tuple[Iterable[Any], ...]) -> int | None:
    if all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables)  # type: ignore[arg-type]  # Sized
    return None


# ---------------------------------------------------------------- pmap


async def pmap(
    f: Callable[..., Any],
    *iterables: Iterable[Any],
    pool: WorkerPoolAPI | None = None,
    distributed: bool = True,
    batch_size: Any = 1,
    on_error: Callable[[Exception], Any] | None = None,
    retry_delays: Iterable[float] = (),
    retry_check: Callable[[Any, Exception], Any] | None = None,
    progress: Any = False,
) -> list[Any]:
    """``[f(*args) for args in zip(*iterables)]``, computed on a pool.

    ``pool`` defaults to the pool ``set_default_worker_pool`` chose, else
    a fresh ``CachingPool(workers())`` for this call.  ``progress=True``
    draws a bar on a terminal stderr; a callable gets ``(done, total)``.
    See the module docstring for errors, batches and retries.
    """
    if not iterables:
        raise TypeError("pmap: give at least one iterable to map over")
    for name, fn in (("on_error", on_error), ("retry_check", retry_check)):
        if fn is not None and not callable(fn):
            raise TypeError(f"pmap: {name}={fn!r} must be callable")

    proc = current_process()
    own: CachingPool | None = None
    if pool is None:
        pool = replaced_default(proc)
    if pool is None:
        own = pool = CachingPool(proc.group.workers())
    counter = Progress(_reporter(progress), _total(iterables))
    try:
        plan = _Plan(
            f,
            pool,
            on_error=on_error,
            delays=Delays(retry_delays),
            check=retry_check,
            counter=counter,
        )
        await plan.configure(distributed, batch_size)
        return await plan.run(zip(*iterables, strict=False))
    finally:
        counter.close()
        if own is not None:
            own.clear()


def _valid_batch_size(batch_size: Any) -> int:
    is_int = isinstance(batch_size, int) and not isinstance(batch_size, bool)
    if is_int and batch_size >= 1:
        return int(batch_size)
    raise ValueError(
        f"pmap: batch_size={batch_size!r} must be a positive int "
        "(there is no 'auto'; try len(inputs) // (4 * nworkers))"
    )


class _Plan:
    """One pmap call: its settings and the machinery that runs it."""

    def __init__(
        self,
        f: Callable[..., Any],
        pool: WorkerPoolAPI,
        *,
        on_error: Callable[[Exception], Any] | None,
        delays: Delays,
        check: Callable[..., Any] | None,
        counter: Progress,
    ) -> None:
        self.f = f
        self.pool = pool
        self.on_error = on_error
        self.delays = delays
        self.check = check
        self.counter = counter
        self.distributed = True
        self.batch_size = 1
        self.ntasks = 1
        # Built once per pmap, so a CachingPool ships each once per worker.
        self._shipped: Callable[..., Any] = (
            f if on_error is None else OnError(f, on_error)
        )
        self._runner = BatchRunner(f, on_error is not None or bool(delays))

    async def configure(self, distributed: bool, batch_size: Any) -> None:
        """Decide where to run, how many tasks, and the batch size."""
        members = await self.pool.workers()
        length = await self.pool.length()
        only_self = members == [current_process().myid]
        self.distributed = bool(distributed) and length > 0 and not only_self
        self.ntasks = max(1, len(members))
        if self.distributed:
            self.batch_size = _valid_batch_size(batch_size)

    async def run(self, inputs: Iterator[tuple[Any, ...]]) -> list[Any]:
        results: list[Any] = []
        if self.batch_size == 1:
            await self._drive(inputs, results, 1, self._one)
        else:
            await self._drive(inputs, results, self.batch_size, self._batch)
            await self._settle(results)
        return results

    async def _drive(
        self,
        inputs: Iterator[tuple[Any, ...]],
        results: list[Any],
        size: int,
        process: Callable[[list[tuple[int, tuple[Any, ...]]], list[Any]], Any],
    ) -> None:
        """Julia's asyncmap: ``ntasks`` tasks, each taking ``size`` inputs at
        a time; the first error stops everything and is raised as it is."""
        failures: list[BaseException] = []

        def pull() -> list[tuple[int, tuple[Any, ...]]]:
            # Synchronous, so tasks never interleave inside the iterator.
            batch = []
            for args in itertools.islice(inputs, size):
                batch.append((len(results), args))
                results.append(None)
            return batch

        async def runner(scope: trio.CancelScope) -> None:
            try:
                while batch := pull():
                    await process(batch, results)
            except Exception as exc:
                if not failures:
                    failures.append(exc)
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for _ in range(self.ntasks):
                nursery.start_soon(runner, nursery.cancel_scope)
        if failures:
            raise failures[0]

    # ------------------------------------------------- one element a call

    async def _one(
        self, batch: list[tuple[int, tuple[Any, ...]]], results: list[Any]
    ) -> None:
        ((index, args),) = batch
        g = self._shipped

        async def attempt() -> Any:
            if self.distributed:
                return await call_on_pool("fetch", g, self.pool, args, {})
            return await _call(g, args)

        try:
            if self.delays:
                value = await retrying(attempt, self.delays, self.check)
            else:
                value = await attempt()
        except ProcessExitedException as exc:
            # The worker died: its own on_error never saw it (BR-01).
            if self.on_error is None or not self.distributed:
                raise
            value = await _call(self.on_error, (exc,))
        results[index] = value
        self.counter.advance()

    # ------------------------------------------------------------ batches

    @property
    def _handling(self) -> bool:
        return self.on_error is not None or bool(self.delays)

    async def _batch(
        self, batch: list[tuple[int, tuple[Any, ...]]], results: list[Any]
    ) -> None:
        arglists = [args for _, args in batch]
        try:
            values = await call_on_pool(
                "fetch", self._runner, self.pool, (arglists,), {}
            )
        except Exception as exc:
            if not self._handling:
                raise
            # The request failed as a whole: so did each of its elements.
            values = [BatchProcessingError(args, exc) for args in arglists]
        for (index, _), value in zip(batch, values, strict=True):
            results[index] = value
        self.counter.advance(
            sum(not isinstance(v, BatchProcessingError) for v in values)
        )

    async def _settle(self, results: list[Any]) -> None:
        """Julia's process_batch_errors!: retry, handle or raise failures."""
        failed = [
            i for i, v in enumerate(results) if isinstance(v, BatchProcessingError)
        ]
        if not failed:
            return
        errors = [results[i].ex for i in failed]

        if self.delays and await self._retry_allowed(errors):
            again = _Plan(
                self.f,
                self.pool,
                on_error=self.on_error,
                delays=self.delays.rest(),
                check=self.check,
                counter=self.counter,
            )
            await again.configure(True, 1)
            redone = await again.run(iter([results[i].data for i in failed]))
            for i, value in zip(failed, redone, strict=True):
                results[i] = value
        elif self.on_error is not None:
            for i, error in zip(failed, errors, strict=True):
                results[i] = await _call(self.on_error, (error,))
                self.counter.advance()
        else:
            raise ExceptionGroup(
                f"pmap: {len(errors)} of {len(results)} elements failed", errors
            )

    async def _retry_allowed(self, errors: list[Exception]) -> bool:
        if self.check is None:
            return True
        # Julia passes the delays' iterator state after the first delay.
        state = self.delays.rest().fresh()
        for error in errors:
            _, again = _verdict(state, await _ask(self.check, state, error))
            if not again:
                return False
        return True
