"""Django: start a saga only once the database transaction that asked for it commits.

A view that saves an order and starts its saga in one ``transaction.atomic()`` block
must not send the saga before the order is committed: a worker could run the first
step before the row is visible to it, or for an order whose transaction then rolls
back and never existed. `run_on_commit` hands the start to Django's
``transaction.on_commit``, so the saga is sent after COMMIT and never after ROLLBACK.

Settings need nothing from this module. With the usual
``app.config_from_object("django.conf:settings", namespace="CELERY")``, Celery's
configuration resolves ``saga_backend`` to the Django setting ``CELERY_SAGA_BACKEND``
(and every other ``saga_*`` setting to its ``CELERY_SAGA_*`` name), which is what
`celery_saga.config.setting` reads.

Django is imported here only, and ``import celery_saga`` never imports this module:
core does not depend on Django.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.db import transaction

from celery_saga.ids import validate_idempotency_key
from celery_saga.response import ensure_json

if TYPE_CHECKING:
    from celery_saga.builder import Saga
    from celery_saga.result import SagaResult

__all__ = ["OnCommitRun", "run_on_commit"]

logger = logging.getLogger(__name__)


class OnCommitRun:
    """A saga start waiting for its transaction; filled in when the saga is sent.

    `idempotency_key` is known at once, so it can be saved on the row the
    transaction writes (and the execution found or started again with it later).
    `result` is the `SagaResult` once the transaction committed and the saga was
    sent, None before that and forever if the transaction rolled back. `error` is
    the exception of a start that failed after the commit (see ``robust``).
    """

    def __init__(self, saga: Saga, idempotency_key: str, using: str | None) -> None:
        self.saga = saga
        self.idempotency_key = idempotency_key
        self.using = using
        self.result: SagaResult | None = None
        self.error: Exception | None = None

    @property
    def dispatched(self) -> bool:
        """True once the transaction committed and the saga was sent."""
        return self.result is not None

    @property
    def saga_id(self) -> str | None:
        """The execution's id once it was started, else None."""
        return None if self.result is None else self.result.saga_id

    def __repr__(self) -> str:
        state = (
            f"saga_id={self.saga_id!r}"
            if self.result is not None
            else ("failed" if self.error is not None else "waiting for commit")
        )
        return f"<OnCommitRun {self.saga.name!r} key={self.idempotency_key!r} {state}>"


def run_on_commit(
    saga: Saga,
    /,
    *,
    using: str | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    robust: bool = False,
    **input: Any,
) -> OnCommitRun:
    """Run `saga` with `input` once the current transaction on `using` commits.

    Inside ``transaction.atomic(using=...)`` the saga is sent after the outermost
    block commits; if the block (or the savepoint this call was made in) rolls
    back, nothing is sent and nothing is written to the saga store. Outside a
    transaction (autocommit) it is sent at once. `using` is the database alias, as
    for ``transaction.on_commit`` (the default database when None).

    The input is checked and copied now, so a value that is not JSON fails here,
    inside the transaction, and later changes to the objects passed do not reach
    the saga. Without `idempotency_key` one is made (a random hex string), so every
    call has one: save ``.idempotency_key`` with your row to find the execution
    later, or to start it again safely with ``saga.run(idempotency_key=...)`` (a
    second run with the same key returns the first execution).

    If sending fails after the commit (broker or store down), the error is raised
    from the end of the ``atomic`` block, after the data was committed, as Django
    does for any ``on_commit`` callback. With ``robust=True`` it is logged and kept
    in ``.error`` instead. Either way, run the saga again with the same key.
    """
    key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
    validate_idempotency_key(key)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")
    snapshot = json.loads(ensure_json(input, f"the input of saga {saga.name!r}", "saga input"))
    run = OnCommitRun(saga, key, using)

    def dispatch() -> None:
        try:
            run.result = saga.run(idempotency_key=key, queue=queue, **snapshot)
        except Exception as exc:
            run.error = exc
            if not robust:
                raise
            logger.exception(
                "saga %r was not started after the commit (idempotency key %r): run it "
                "again with the same idempotency key",
                saga.name,
                key,
            )

    transaction.on_commit(dispatch, using=using)
    return run
