"""A second lane for independent training work: helper processes take tasks (pure functions of picklable inputs)
while the main process keeps working, and only the main process talks to MLflow.

Every task seeds its own randomness and runs with one thread, so a run gives the same numbers with helpers or
without (`workers = 1` runs each task in the main process when its result is asked for); a test checks it.
Processes, not threads: much of the work is numpy and pandas glue that holds the GIL (candidate features,
evaluation loops), and the libraries' own threads are either not deterministic (LightFM's and BPR's Hogwild updates)
or spin on a shared machine (OpenMP in the trees).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# imported by each helper as it starts, while the main process loads the data
WARM_MODULES = ("training.recommender", "training.segments", "training.propensity")


class Pending(Protocol[T_co]):
    def result(self) -> T_co: ...


class _Deferred(Generic[T]):
    """A task for the main process: run when its result is first asked for (an error is raised there too)."""

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._call: tuple[Callable[..., T], tuple[Any, ...]] | None = (fn, args)
        self._value: T | None = None

    def result(self) -> T:
        if self._call is not None:
            fn, args = self._call
            self._value = fn(*args)
            self._call = None
        return self._value  # type: ignore[return-value]


class Lanes:
    """`submit(fn, *args)` -> something with `.result()`; with no helper process the task runs in this process."""

    def __init__(self, pool: Executor | None = None) -> None:
        self._pool = pool

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        if self._pool is None:
            return _Deferred(fn, args)
        return self._pool.submit(fn, *args)


INLINE = Lanes()


def default_workers(quick: bool = False) -> int:
    """Two lanes where there are two cores (tasks are sized for one helper); one for --quick runs, whose work is too
    small to pay for starting a process."""
    return 1 if quick else min(2, os.cpu_count() or 1)


def _warm(modules: tuple[str, ...]) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name in modules:
        importlib.import_module(name)


@contextmanager
def lanes(workers: int, warm: tuple[str, ...] = WARM_MODULES) -> Iterator[Lanes]:
    """`workers` lanes: this process and `workers - 1` helper processes (started fresh, not forked: the parent may
    hold OpenMP and Arrow thread pools). A helper that dies fails its tasks (BrokenProcessPool) instead of leaving
    them waited for; on an error here the helpers are stopped at once, not waited for."""
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    if workers == 1:
        yield INLINE
        return
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn"), initializer=_warm,
                               initargs=(warm,))
    try:
        yield Lanes(pool)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way to stop a busy one
            process.terminate()
        raise
    pool.shutdown(wait=True)
