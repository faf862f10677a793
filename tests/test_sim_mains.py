"""Each simulated worker has a ``__main__`` of its own, as a real one would."""

from __future__ import annotations

import importlib
import sys
import uuid

import pytest

import ref
import sim


def _set_main(name: str, value: object) -> None:
    setattr(sys.modules["__main__"], name, value)


def _get_main(name: str) -> object:
    return getattr(importlib.import_module("__main__"), name, "undefined")


def test_workers_do_not_share_main_with_each_other_or_the_master() -> None:
    name = f"distref_test_{uuid.uuid4().hex}"

    async def main() -> tuple[object, list[object], object]:
        async with sim.open_cluster():
            a, b = await ref.addprocs(2)
            _set_main(name, "master")
            await ref.remotecall_fetch(_set_main, a, name, "a")
            seen = [await ref.remotecall_fetch(_get_main, p, name) for p in (a, b)]
            [late] = await ref.addprocs(1)
            return (
                _get_main(name),
                seen,
                await ref.remotecall_fetch(_get_main, late, name),
            )

    real = sys.modules["__main__"]
    try:
        here, seen, late = sim.run(main, seed=1)
        assert (here, seen, late) == ("master", ["a", "undefined"], "undefined")
        # The master's binding went to the real module; the run gave it back.
        assert sys.modules["__main__"] is real
        assert getattr(real, name) == "master"
    finally:
        if hasattr(real, name):
            delattr(real, name)


def test_the_real_main_is_back_after_a_failed_run() -> None:
    real = sys.modules["__main__"]

    async def main() -> None:
        assert sys.modules["__main__"] is not real
        raise ValueError("the run fails")

    with pytest.raises(ValueError, match="the run fails"):
        sim.run(main, seed=1)
    assert sys.modules["__main__"] is real
