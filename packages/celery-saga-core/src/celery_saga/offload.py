"""Blocking store and broker calls from asyncio: in threads, a few at a time per loop.

Stores and Celery's producers are synchronous, so the asyncio client runs their calls
in the loop's default executor (`asyncio.to_thread`), never on the loop. It runs at
most `limit()` of them at once per event loop, the others waiting their turn on the
loop: the calls are short, and partly CPU-bound Python (Celery builds and encodes
messages, stores encode and decode JSON), so many threads running them at once fight
the loop's thread for the GIL and the loop wakes late. Measured on two busy cores
(Redis store, a worker process), 200 concurrent `arun` + `aget` on the default executor
(6 threads) stalled the loop for up to 150 ms and took 3.4 to 6 s; four at a time, for
5 to 30 ms in most runs, in 1.4 to 2.4 s.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["limit", "run_blocking", "set_limit"]

T = TypeVar("T")

_limit = 4
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def limit() -> int:
    """How many blocking calls the asyncio client runs at once per event loop."""
    return _limit


def set_limit(n: int) -> None:
    """Run at most `n` blocking calls at once per event loop (default 4).

    Raise it for a store far away (each call then mostly waits on the network); the
    default suits a store on the local network. Loops already running keep their
    limit; new loops use the new one.
    """
    global _limit
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the thread limit must be a positive integer, got {n!r}")
    _limit = n


def _semaphore(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    with _lock:
        found = _semaphores.get(loop)
        if found is None:
            found = _semaphores[loop] = asyncio.Semaphore(_limit)
        return found


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)`` run in a thread, when this loop's turn comes.

    Context variables are passed to the thread, as `asyncio.to_thread` does.
    """
    async with _semaphore(asyncio.get_running_loop()):
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
