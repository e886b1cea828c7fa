"""A process pool whose `map` survives a worker that dies: the job it was running gets a result saying so.

A native crash (a decoder's segfault) kills the worker and breaks a `ProcessPoolExecutor`, failing every
pending job without saying which one did it. `CrashSafePool.map` then runs the jobs not yet done one at a
time in a fresh single-worker pool, so that a second death names its job exactly, and carries on.
"""
from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from mbt_core.worker_processes import worker_start


class CrashSafePool:
    """`workers` spawned processes (spawn: forking a process that has imported JAX can deadlock) that end with
    their parent, even a parent killed by SIGKILL (`worker_processes.worker_start`)."""

    def __init__(self, workers: int, initializer: Callable[[], Any] | None = None):
        self.workers, self.initializer = workers, initializer
        self._pool: ProcessPoolExecutor | None = None
        self._size = 0

    def _start(self, workers: int) -> ProcessPoolExecutor:
        self.shutdown()
        self._pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                         initializer=functools.partial(worker_start, self.initializer))
        self._size = workers
        return self._pool

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], crashed: Callable[[Any], Any]) -> Iterator[Any]:
        """fn(job) for each job in order; `crashed(job)` for a job whose worker process died."""
        pool = self._pool if self._pool is not None and self._size == self.workers else self._start(self.workers)
        futures = [pool.submit(fn, job) for job in jobs]
        for k, future in enumerate(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                yield from self._one_at_a_time(fn, jobs[k:], crashed)
                return

    def _one_at_a_time(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
                       crashed: Callable[[Any], Any]) -> Iterator[Any]:
        pool = self._start(1)
        for job in jobs:
            try:
                yield pool.submit(fn, job).result()
            except BrokenProcessPool:
                yield crashed(job)
                pool = self._start(1)

    def shutdown(self) -> None:
        """Stop the worker processes, cancelling jobs not started."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
