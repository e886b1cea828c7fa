"""What every worker process of the project does first: end with its parent, and leave Ctrl-C to it.

A parent killed by SIGKILL runs no cleanup, so a pool's workers would live on (holding their memory)
waiting for jobs that never come. Each worker watches its parent's sentinel (multiprocessing's pipe that
closes when the parent ends, however it ends) and exits then. Ctrl-C reaches the whole process group; the
parent alone handles it (and stops its pool), so workers ignore SIGINT instead of each printing a traceback.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Any, Callable


def _exit_when_parent_ends(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)  # no cleanup to run: the parent that wanted the results is gone


def worker_start(initializer: Callable[[], Any] | None = None) -> None:
    """A pool's initializer: exit when the parent ends, ignore SIGINT, then run `initializer` (if any)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_exit_when_parent_ends, args=(parent.sentinel,), daemon=True).start()
    if initializer is not None:
        initializer()
