"""Who runs an attempt: the name recorded as a step's `worker` (or `comp_worker`).

The worker's node name (``celery@host``, what ``celery inspect`` and Flower show) when
the attempt runs in a worker's task. Celery puts it in the task request only in a
prefork child (the solo and threads pools put the bare host name there), so it is
remembered from `worker_init`, per app, which every pool's worker sends first; the
request's host name serves where that was missed. Outside a worker's task (eager
mode, a signal handler in a worker's main process) it is ``host/pid``. A reply task
records an outcome for a step that ran somewhere else: who ran it is not known there.
"""

from __future__ import annotations

import os
import socket
import weakref
from typing import TYPE_CHECKING, Any

from celery import current_task
from celery.signals import worker_init

from celery_saga.compiler import REPLY_FAILURE, REPLY_SUCCESS

if TYPE_CHECKING:
    from celery import Celery

#: Tasks that record the outcome of a step run by another worker.
_REPLIES = frozenset({REPLY_SUCCESS, REPLY_FAILURE})
#: The node name of the worker started for each app in this process (inherited by forks).
_nodes: weakref.WeakKeyDictionary[Celery, str] = weakref.WeakKeyDictionary()
#: (pid, "host/pid") of this process: made once, and again after a fork.
_process: tuple[int, str] = (0, "")


@worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _remember_node(sender: Any = None, **_: Any) -> None:
    """A worker starts in this process: remember its node name for its app's tasks."""
    app, hostname = getattr(sender, "app", None), getattr(sender, "hostname", None)
    if app is not None and hostname:
        _nodes[app] = str(hostname)


def process_name() -> str:
    """``host/pid`` of this process (computed once per process)."""
    global _process
    pid = os.getpid()
    if _process[0] != pid:
        _process = (pid, f"{socket.gethostname()}/{pid}")
    return _process[1]


def worker_name() -> str | None:
    """The worker running the current task's attempt, or None inside a reply task.

    A thread-local lookup and a dict lookup: cheap enough for every outcome write.
    """
    task = current_task._get_current_object()
    if task is not None:
        if task.name in _REPLIES:
            return None
        node = _nodes.get(task._get_app()) if _nodes else None
        if node:
            return node
        if not getattr(task.request, "is_eager", False):
            hostname = getattr(task.request, "hostname", None)
            if hostname:
                return str(hostname)
    return process_name()
