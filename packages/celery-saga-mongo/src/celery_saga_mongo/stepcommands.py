"""The commands of a step write on MongoDB: the step's ``findAndModify`` (tried again
when its refusal raced with a write that made the conditions hold), lease renewals in
one ``bulkWrite``, and late outcomes. What each command says (filters, updates,
projections) is `stepwrites`'; `MongoSagaBackend` prepares the collection and hands
these writes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection as MongoCollection
from pymongo.errors import OperationFailure

from celery_saga.backends.base import (
    Lease,
    StepExpect,
    StepWrite,
    StoreStats,
    check_step_changes,
    payload_size,
)
from celery_saga.models import SagaExecution, SagaStatus, StepStatus, now
from celery_saga_mongo import stepwrites
from celery_saga_mongo.documents import (
    LATE_STATE,
    check_number,
    check_saga_id,
    check_step_index,
    counter_field,
    encode_late_entry,
    encode_step_value,
    execution_from_document,
)

#: How often a compare-and-set is re-tried when its refusal raced with a write
#: that made the conditions hold again (each try is one atomic command).
CAS_TRIES = 8
#: Server error code of an update that cannot create a field inside a non-document
#: (``$set`` of ``late.<attempt>`` while ``late`` is null).
_PATH_NOT_VIABLE = 28


class StepCommands:
    """The step writes of one store object, on its collection; `prepare` readies the
    collection (its first use makes the indexes) once the arguments are checked."""

    def __init__(
        self,
        executions: MongoCollection[dict[str, Any]],
        stats: StoreStats,
        prepare: Callable[[], None],
    ) -> None:
        self.executions, self.stats, self._prepare = executions, stats, prepare

    def write_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        expect: StepExpect | None,
        count_in: str | None,
        get_at: int | None,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """A step write in one ``findAndModify`` (`MongoSagaBackend.update_step_and_get`):
        its `StepWrite`, and the whole execution when the projection returned it."""
        saga_id = check_saga_id(saga_id)
        index = check_step_index(index)
        check_step_changes(changes)
        values = {name: encode_step_value(name, value) for name, value in changes.items()}
        counter = None if count_in is None else counter_field(count_in)
        query = stepwrites.step_query(saga_id, index, expect)
        if get_at is not None and (isinstance(get_at, bool) or not isinstance(get_at, int)):
            raise TypeError(f"get_at must be an int, got {get_at!r}")
        projection = stepwrites.step_projection(
            index, counter if get_at is not None else None, get_at
        )
        written = payload_size(*values, *values.values())
        self._prepare()
        state: dict[str, Any] = {}
        for _ in range(CAS_TRIES):
            update = stepwrites.step_update(index, values, counter, now())
            self.stats.add(1, written)
            document = self.executions.find_one_and_update(
                query, update, projection=projection, return_document=ReturnDocument.AFTER
            )
            if document is not None:
                state = stepwrites.read_state(document, index, saga_id)
                write = stepwrites.step_write(True, state, state.get("seq") if counter else None)
                whole = document.get(stepwrites.WHOLE)
                return write, None if whole is None else execution_from_document(whole)
            # Refused: read why. The conditions are checked again in Python with the
            # contract's own `refusal`; if they hold now, the refusal raced with a write
            # that restored them, and the write is tried again.
            self.stats.add()
            current = self.executions.find_one({"_id": saga_id}, projection=projection)
            if current is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            state = stepwrites.read_state(current, index, saga_id)
            if expect is None:
                continue
            reason = expect.refusal(
                StepStatus(state["status"]),
                int(state["attempt"]),
                int(state["comp_attempt"]),
                SagaStatus(state["saga_status"]),
                state["lease_owner"],
                state["lease_expires_at"],
            )
            if reason is not None:
                return stepwrites.step_write(False, state, None), None
        return stepwrites.step_write(False, state, None), None

    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """One request in the common case: an unordered ``bulkWrite`` of one ``updateOne``
        per lease, each filtered on the lease's conditions (`Lease.expect`).

        The reply counts the matches but does not say which operations matched, so
        when every lease matched nothing is lost and nothing more is sent. Otherwise
        one ``find`` reads the lease fields of the steps concerned, and a lease is
        kept when its step still runs that attempt under its owner (its own renewal,
        just applied, or a later one from the same process); the others are lost.
        A lease renewed twice in one call matches twice (the second time it is
        already its owner's), so duplicates cost nothing extra.
        """
        expires = check_number(expires_at, "expires_at")
        if not leases:
            return []
        operations = []
        for lease in leases:
            saga_id = check_saga_id(lease.saga_id)
            index = check_step_index(lease.index)
            owner = stepwrites.check_owner(lease.owner, "lease owner")
            operations.append(
                UpdateOne(
                    stepwrites.step_query(saga_id, index, lease.expect()),
                    {
                        "$set": {
                            f"steps.{index}.lease_owner": owner,
                            f"steps.{index}.lease_expires_at": expires,
                        }
                    },
                )
            )
        self._prepare()
        self.stats.add(
            1,
            sum(
                payload_size("lease_owner", lease.owner, "lease_expires_at", expires)
                for lease in leases
            ),
        )
        result = self.executions.bulk_write(operations, ordered=False)
        if result.matched_count == len(operations):
            return []
        return self._lost_leases(leases)

    def _lost_leases(self, leases: Sequence[Lease]) -> list[Lease]:
        """Which of `leases` their owners no longer hold (one ``find``)."""
        projection: dict[str, Any] = {"status": 1}
        for index in sorted({lease.index for lease in leases}):
            projection[f"s{index}"] = stepwrites.step_fields(index)
        saga_ids = sorted({lease.saga_id for lease in leases})
        self.stats.add()
        found = {
            document["_id"]: document
            # One batch for all of them (the default first batch stops at 101 documents).
            for document in self.executions.find(
                {"_id": {"$in": saga_ids}}, projection=projection, batch_size=len(saga_ids)
            )
        }
        return [lease for lease in leases if not stepwrites.holds(lease, found.get(lease.saga_id))]

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """One ``findAndModify`` on ``steps.<i>.late.<attempt>``.

        To create the entry the filter requires it to be absent and the update
        ``$set``\\ s the whole entry; to move it on, the filter requires its ``state``
        and the update ``$set``\\ s only the changed fields of the entry (the merge
        happens on the server, so nothing is read first). A step whose ``late`` is
        null (set so by `update_step`) cannot hold a path below it: that one case
        costs a second command, which replaces the null with the new object.
        """
        saga_id = check_saga_id(saga_id)
        index = check_step_index(index)
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise TypeError(f"a late success's attempt must be an int, got {attempt!r}")
        if expect_state is not None and not isinstance(expect_state, str):
            raise TypeError(f"expect_state must be a string or None, got {expect_state!r}")
        entry = encode_late_entry(changes)
        key = str(attempt)
        path = f"steps.{index}.late.{key}"
        element: dict[str, Any] = {"index": index}
        if expect_state is None:
            element[f"late.{key}"] = {"$exists": False}
            values: dict[str, Any] = {path: entry}
        else:
            element[f"late.{key}.{LATE_STATE}"] = {"$eq": expect_state}
            values = {f"{path}.{name}": value for name, value in entry.items()}
        query = {"_id": saga_id, "steps": {"$elemMatch": element}}
        projection = stepwrites.step_projection(index)
        written = payload_size(*entry, *entry.values())
        self._prepare()
        for _ in range(CAS_TRIES):
            self.stats.add(1, written)
            try:
                document = self.executions.find_one_and_update(
                    query,
                    {"$set": {**values, "updated_at": now()}},
                    projection=projection,
                    return_document=ReturnDocument.AFTER,
                )
            except OperationFailure as exc:  # findAndModify reports it as a command error
                if exc.code != _PATH_NOT_VIABLE or expect_state is not None:
                    raise
                # `late` is null: put the whole object in its place, if it still is null.
                self.stats.add(1, written)
                document = self.executions.find_one_and_update(
                    {"_id": saga_id, "steps": {"$elemMatch": {"index": index, "late": None}}},
                    {"$set": {f"steps.{index}.late": {key: entry}, "updated_at": now()}},
                    projection=projection,
                    return_document=ReturnDocument.AFTER,
                )
                if document is None:
                    continue  # someone else made it an object meanwhile: try the first way
            if document is not None:
                return stepwrites.step_write(
                    True, stepwrites.read_state(document, index, saga_id), None
                )
            break
        # Refused: read the state to report (or find out that there is no such step).
        self.stats.add()
        current = self.executions.find_one({"_id": saga_id}, projection=projection)
        if current is None:
            raise KeyError(f"no step {index} in saga {saga_id}")
        return stepwrites.step_write(False, stepwrites.read_state(current, index, saga_id), None)
