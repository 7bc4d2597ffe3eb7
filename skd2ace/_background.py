"""Work in background threads that a fork of the process waits for.

The neighbour search and the record's bookkeeping run in threads while the caller
trains: their numpy, BLAS and torch kernels release the GIL. Forking while such a
thread is inside BLAS or torch deadlocked the parent (their fork handlers wait for
thread pools in use), e.g. when a DataLoader started its worker processes, so
every task submitted here is waited for before ``os.fork``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["available_cores", "free_cores", "submit"]

_RUNNING: set[Future] = set()
_RUNNING_LOCK = threading.Lock()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS, Windows


def free_cores(device=None) -> int:
    """Cores this process may use that training leaves free (≥ 0).

    On the CPU, training takes torch's intra-op threads; on a GPU (``device`` a CUDA
    device), only the thread that drives it (torch's CPU threads then wait).
    """
    import torch  # here: the numpy core submits its pool threads through this module

    cores = available_cores()
    if device is not None and torch.device(device).type == "cuda":
        return max(0, cores - 1)
    return max(0, cores - torch.get_num_threads())


def submit(executor: ThreadPoolExecutor, fn, *args) -> Future:
    """``executor.submit(fn, *args)``, waited for by a fork while it runs."""
    with _RUNNING_LOCK:
        future = executor.submit(fn, *args)
        _RUNNING.add(future)
    future.add_done_callback(_forget)
    return future


def _forget(future: Future) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(future)


def _wait_for_all() -> None:
    """Before ``os.fork``: let background tasks finish (errors are raised by their
    owners, who hold the futures), then hold the lock across the fork: no task is
    submitted meanwhile, and a worker still inside :func:`_forget` would otherwise
    leave it locked in the child.

    Checked again under the lock after every wait: a task submitted while the
    others were waited for (a training thread's next queue, another fit's search)
    must not be running at the fork either. Finished tasks whose :func:`_forget`
    has not run yet do not count (their threads are past their kernels)."""
    while True:
        _RUNNING_LOCK.acquire()
        running = [future for future in _RUNNING if not future.done()]
        if not running:
            return  # the lock stays held across the fork
        _RUNNING_LOCK.release()
        for future in running:
            future.exception()


def _after_fork_in_child() -> None:
    """The child has none of the parent's threads: nothing runs there."""
    _RUNNING.clear()
    _RUNNING_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_wait_for_all,
        after_in_parent=_RUNNING_LOCK.release,
        after_in_child=_after_fork_in_child,
    )
