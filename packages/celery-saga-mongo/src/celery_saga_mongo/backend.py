"""`MongoSagaBackend`: the saga state store on MongoDB.

One document per execution in ``<prefix>executions`` (layout in
`celery_saga_mongo.documents`). Every operation is one atomic single-document
command, so no transactions are needed:

- a step write is one ``findAndModify`` whose filter encodes the `StepExpect`
  conditions and whose update ``$set``\\ s only ``steps.<i>.<field>`` (O(that step));
  lease conditions are matched with ``$elemMatch`` on the step (see
  `stepwrites.step_query`);
- a step write that bumps a counter (``count_in``) is one ``findAndModify`` with an
  update pipeline: the first stage increments ``counters.<name>``, the second
  copies the new value into that step's ``seq``, so the two cannot be separated;
- ``update_saga`` is one ``updateOne`` filtered on the expected status;
- ``renew_leases`` is one unordered ``bulkWrite`` (one ``update`` command) of one
  ``updateOne`` per lease, each filtered on `Lease.expect`; only when fewer leases
  matched than were sent does a second request read which ones were lost;
- ``record_late`` is one ``findAndModify`` filtered on the entry's absence (or its
  ``state``) that ``$set``\\ s ``steps.<i>.late.<attempt>`` (or its fields);
- ``create`` is one ``insertOne``; a unique partial index on ``idempotency_key``
  makes concurrent creators with one key produce one execution;
- the step write that completes a stage (``update_step_and_get``) gets the whole
  execution back from the same ``findAndModify``: its projection returns the
  document only when the counter's new value is the stage's size;
- listing reads the (status | name | both | parent | neither, created_at, _id) indexes
  newest first with a keyset cursor (`celery_saga_mongo.listing`).

The step writes, lease renewals and late outcomes are run by `stepcommands` with the
filters and updates `stepwrites` builds. `wait` uses a change stream on the execution
where the server has them (replica sets and sharded clusters; SecantusDB advertises a
single-node replica set), and the base class's bounded polling elsewhere. Requires
MongoDB 4.4 or newer.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.collection import Collection as MongoCollection
from pymongo.driver_info import DriverInfo
from pymongo.errors import DuplicateKeyError, OperationFailure

from celery_saga.backends.base import (
    Lease,
    Page,
    SagaBackend,
    StartNext,
    StepExpect,
    StepWrite,
    check_limit,
    check_saga_changes,
    decode_cursor,
    normalize_status,
    payload_size,
)
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    StepStatus,
    now,
)
from celery_saga_mongo.documents import (
    check_number,
    check_saga_id,
    check_text,
    encode_saga_value,
    execution_document,
    execution_from_document,
)
from celery_saga_mongo.listing import Listing
from celery_saga_mongo.stepcommands import CAS_TRIES, StepCommands
from celery_saga_mongo.urls import (
    DEFAULT_DATABASE,
    check_collection_prefix,
    parse_flag,
    redact,
    split_url,
)
from celery_saga_mongo.version import __version__
from celery_saga_mongo.waiting import StreamRefused, wait_on_stream

logger = logging.getLogger("celery_saga.mongo")

#: Oldest server wire version this store runs on: MongoDB 4.4 (pipeline updates
#: arrived in 4.2, aggregation expressions in findAndModify projections in 4.4).
MIN_WIRE_VERSION = 9
_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)
#: How often `create` re-tries after losing an idempotency race to an execution
#: that was deleted before it could be read.
_CREATE_TRIES = 8

#: Index name -> keys. Listing uses the five (…, created_at, _id) indexes newest
#: first (``parent_created``, added with saga composition, lists the children of one
#: execution: a store of this version creates it on first use, next to the others); the
#: idempotency index is unique over documents whose key is a string.
INDEXES: dict[str, list[tuple[str, int]]] = {
    "status_created": [("status", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
    "name_created": [("saga_name", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
    "created": [("created_at", ASCENDING), ("_id", ASCENDING)],
    "name_status_created": [
        ("saga_name", ASCENDING),
        ("status", ASCENDING),
        ("created_at", ASCENDING),
        ("_id", ASCENDING),
    ],
    "parent_created": [("parent_id", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
}
IDEMPOTENCY_INDEX = "idempotency_key_unique"


class MongoSagaBackend(SagaBackend):
    """Saga state in MongoDB, one document per execution.

    ``MongoSagaBackend(url="mongodb://localhost:27017/celery_saga")`` or
    ``MongoSagaBackend(client=MongoClient(...), database="celery_saga")``.

    - `collection_prefix` (default ``"saga_"``) names the collection
      ``<prefix>executions``, so several stores can share a database;
    - `change_streams`: True to require change streams in `wait`, False to poll,
      None (default) to use them when the server has them;
    - `create_indexes`: create the indexes on first use (default True); turn it off
      where the user lacks the privilege and the indexes are made by migration.

    Keyword options given explicitly win over the URL's query options; other
    keywords (``serverSelectionTimeoutMS=...``) go to `MongoClient`.
    """

    schemes = ("mongodb", "mongodb+srv")

    def __init__(
        self,
        client: MongoClient[dict[str, Any]] | None = None,
        url: str | None = None,
        *,
        database: str | None = None,
        collection_prefix: str | None = None,
        change_streams: bool | None = None,
        create_indexes: bool | None = None,
        **client_options: Any,
    ) -> None:
        if (client is None) == (url is None):
            raise ValueError(
                "MongoSagaBackend needs exactly one of url='mongodb://...' or client=MongoClient()"
            )
        url_options: dict[str, str] = {}
        client_url = ""
        if url is not None:
            parsed = split_url(url)
            client_url, url_options = parsed.client_url, parsed.options
            database = database or parsed.database
        elif client_options:
            raise TypeError(
                f"client options {sorted(client_options)} apply only when the store makes "
                "its own client from a URL; configure the MongoClient you pass instead"
            )
        # Every option is checked before a client (and its monitor threads) exists.
        if collection_prefix is None:
            collection_prefix = url_options.get("collection_prefix", "saga_")
        self.collection_prefix = check_collection_prefix(collection_prefix)
        if change_streams is None:
            change_streams = parse_flag(url_options.get("change_streams"), "change_streams")
        if create_indexes is None:
            create_indexes = parse_flag(url_options.get("create_indexes"), "create_indexes")
        self._owns_client = client is None
        if client is None:
            client_options.setdefault(
                "driver", DriverInfo(name="celery-saga-mongo", version=__version__)
            )
            client = MongoClient(client_url, **client_options)
        if database is None:
            database = client.get_default_database(default=DEFAULT_DATABASE).name
        self.client: MongoClient[dict[str, Any]] = client
        self.database_name: str = database
        self.executions: MongoCollection[dict[str, Any]] = client[database][
            f"{self.collection_prefix}executions"
        ]
        self._url = url
        self._want_change_streams = change_streams
        #: Whether `wait` uses change streams; decided once, on first use.
        self.change_streams: bool | None = None if change_streams is not False else False
        self._create_indexes = create_indexes is not False
        self._ready = threading.Event()
        self._lock = threading.Lock()
        #: The pages of `list` (`listing`).
        self._listing = Listing(self.executions, self.stats)
        #: The step writes (`stepcommands`).
        self._steps = StepCommands(self.executions, self.stats, self._prepare)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MongoSagaBackend:
        """``mongodb://[user:pw@]host[:port][,host...]/dbname?collection_prefix=saga_``.

        The database comes from the URL path (default ``celery_saga``). Store options
        in the query (``collection_prefix``, ``change_streams``, ``create_indexes``)
        are removed before pymongo parses the URL; every other option is pymongo's.
        """
        return cls(url=url, **options)

    @classmethod
    def open_for_reading(cls, url: str, **options: Any) -> MongoSagaBackend:
        """The store at `url` with ``create_indexes=False``: reading creates nothing.

        Creating the indexes would create the collection (and the database) at a
        mistyped URL; reads of a collection that does not exist find nothing instead.
        """
        return cls(url=url, **{**options, "create_indexes": False})

    def __repr__(self) -> str:
        where = redact(self._url).split("?", 1)[0] if self._url else "client"
        return f"<MongoSagaBackend {where} collection={self.executions.full_name!r}>"

    # -- first use -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Check the server once and create the indexes (idempotent, thread-safe)."""
        if self._ready.is_set():
            return
        with self._lock:
            if self._ready.is_set():
                return
            self.stats.add()
            try:
                hello = self.client[self.database_name].command("hello")
            except OperationFailure:  # MongoDB 4.4.0 and 4.4.1 only know the old name
                self.stats.add()
                hello = self.client[self.database_name].command("isMaster")
            wire = int(hello.get("maxWireVersion", 0))
            if wire < MIN_WIRE_VERSION:
                raise RuntimeError(
                    f"MongoSagaBackend needs MongoDB 4.4 or newer (update pipelines and "
                    f"expressions in findAndModify projections); the server reports wire "
                    f"version {wire}: upgrade the server"
                )
            clustered = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
            if self._want_change_streams is True and not clustered:
                raise RuntimeError(
                    "change_streams=True, but the server is a standalone mongod without "
                    "change streams: run it as a replica set, or use change_streams=auto"
                )
            if self.change_streams is None:
                self.change_streams = clustered
            if self._create_indexes:
                self.stats.add()
                self.executions.create_indexes(
                    [IndexModel(keys, name=name) for name, keys in INDEXES.items()]
                    + [
                        IndexModel(
                            [("idempotency_key", ASCENDING)],
                            name=IDEMPOTENCY_INDEX,
                            unique=True,
                            partialFilterExpression={"idempotency_key": {"$type": "string"}},
                        )
                    ]
                )
            self._ready.set()

    # -- create and read -----------------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        check_saga_id(execution.saga_id)
        check_text(execution.saga_name, "saga name")
        if execution.parent_id is not None:  # filtered on by listings: a plain string
            check_saga_id(execution.parent_id)
        key = execution.idempotency_key
        if key is not None:
            check_text(key, "idempotency key")
        document = execution_document(execution)
        written = payload_size(document)
        self._prepare()
        for _ in range(_CREATE_TRIES):
            self.stats.add(1, written)
            try:
                self.executions.insert_one(document)
                return execution, True
            except DuplicateKeyError as exc:
                pattern = (exc.details or {}).get("keyPattern") or {}
                if key is None or ("_id" in pattern and "idempotency_key" not in pattern):
                    raise ValueError(f"saga id {execution.saga_id} already exists") from None
            existing = self.find_by_idempotency_key(key)
            if existing is not None:
                return existing, False
            self.stats.add()
            if self.executions.find_one({"_id": execution.saga_id}, projection={"_id": 1}):
                raise ValueError(f"saga id {execution.saga_id} already exists")
            # The holder of the key was deleted before we could read it: try again.
        raise RuntimeError(
            f"could not create saga {execution.saga_id}: idempotency key {key!r} kept changing "
            f"hands ({_CREATE_TRIES} tries)"
        )

    def get(self, saga_id: str) -> SagaExecution | None:
        saga_id = check_saga_id(saga_id)
        self._prepare()
        self.stats.add()
        document = self.executions.find_one({"_id": saga_id})
        return None if document is None else execution_from_document(document)

    def get_status(self, saga_id: str) -> SagaStatus | None:
        saga_id = check_saga_id(saga_id)
        self._prepare()
        self.stats.add()
        document = self.executions.find_one({"_id": saga_id}, {"status": 1})
        return None if document is None else SagaStatus(document["status"])

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        key = check_text(key, "idempotency key")
        self._prepare()
        self.stats.add()
        # The `$type` clause repeats the partial index's filter so the planner may use it.
        document = self.executions.find_one({"idempotency_key": {"$eq": key, "$type": "string"}})
        return None if document is None else execution_from_document(document)

    # -- compare-and-set -----------------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        saga_id = check_saga_id(saga_id)
        check_saga_changes(changes)
        values = {name: encode_saga_value(name, value) for name, value in changes.items()}
        query: dict[str, Any] = {"_id": saga_id}
        if expect_status is not None:
            query["status"] = {"$in": sorted({SagaStatus(s).value for s in expect_status})}
        self._prepare()
        self.stats.add(1, payload_size(*values, *values.values()))
        result = self.executions.update_one(query, {"$set": {**values, "updated_at": now()}})
        return result.matched_count == 1

    def update_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> StepWrite:
        return self._steps.write_step(saga_id, index, changes, expect, count_in, None)[0]

    def update_step_and_get(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
        get_at: int | None = None,
        start_next: StartNext | None = None,
        read: bool = True,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """One ``findAndModify``: the step write, and the whole execution if `get_at` is hit.

        The projection returns the document after the write only when the
        counter's new value is `get_at` (an aggregation expression evaluated by
        the server), so the member that completes its stage reads the execution
        in the same round trip and every other write still returns O(that step).
        The steps of `start_next` are then marked started as the contract says,
        one compare-and-set each.
        """
        write, execution = self._steps.write_step(saga_id, index, changes, expect, count_in, get_at)
        if execution is not None and start_next is not None and start_next.ready(execution):
            pending = StepExpect(
                status=frozenset({StepStatus.PENDING}),
                attempt=0,
                saga_status=frozenset({SagaStatus.RUNNING}),
            )
            started = []
            for i in start_next.start:
                if self.update_step(saga_id, i, start_next.changes[i], expect=pending).applied:
                    start_next.apply(execution, i)
                    started.append(i)
            write = dataclasses.replace(write, started=tuple(started))
        return write, execution

    # -- leases and late outcomes --------------------------------------------------------------
    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> builtins.list[Lease]:
        """One request in the common case: an unordered ``bulkWrite`` of one ``updateOne``
        per lease, each filtered on the lease's conditions (`Lease.expect`); a ``find``
        says which were lost only when fewer matched than were sent (`stepcommands`)."""
        return self._steps.renew_leases(leases, expires_at)

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """One ``findAndModify`` on ``steps.<i>.late.<attempt>`` (`stepcommands`)."""
        return self._steps.record_late(saga_id, index, attempt, changes, expect_state=expect_state)

    # -- listing and housekeeping --------------------------------------------------------------
    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        created_before: float | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
    ) -> Page:
        wanted = normalize_status(status)
        check_limit(limit)
        position = decode_cursor(cursor) if cursor else None
        base: dict[str, Any] = {}
        if parent_id is not None:  # first: the children index leads with it
            base["parent_id"] = check_saga_id(parent_id)
        if wanted is not None:
            base["status"] = wanted.value
        if name is not None:
            base["saga_name"] = check_text(name, "saga name")
        before = None if created_before is None else check_number(created_before, "created_before")
        after = None if created_after is None else check_number(created_after, "created_after")
        self._prepare()
        return self._listing.page(base, before, after, position, limit)

    def delete(self, saga_id: str) -> bool:
        saga_id = check_saga_id(saga_id)
        self._prepare()
        for _ in range(CAS_TRIES):
            self.stats.add()
            result = self.executions.delete_one({"_id": saga_id, "status": {"$in": _TERMINAL}})
            if result.deleted_count:
                return True
            self.stats.add()
            document = self.executions.find_one({"_id": saga_id}, projection={"status": 1})
            if document is None:
                return False
            if document.get("status") not in _TERMINAL:
                raise ValueError(
                    f"saga {saga_id} is {document.get('status')}: only finished executions "
                    "can be deleted (cancel it first, or wait for it to finish)"
                )
        return False

    def purge(self, finished_before: float) -> int:
        cutoff = check_number(finished_before, "finished_before")
        self._prepare()
        self.stats.add()
        result = self.executions.delete_many(
            {
                "status": {"$in": _TERMINAL},
                "$or": [
                    {"finished_at": {"$lt": cutoff}},
                    {"finished_at": None, "updated_at": {"$lt": cutoff}},
                ],
            }
        )
        return int(result.deleted_count)

    # -- waiting -------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Wait on a change stream of the execution (`waiting`); poll where the server
        has none (the base class's bounded polling)."""
        saga_id = check_saga_id(saga_id)
        self._prepare()
        poll = functools.partial(SagaBackend.wait, self, saga_id)
        if not self.change_streams:
            return poll(timeout)
        try:
            return wait_on_stream(self.executions, self.stats, saga_id, timeout, self.get, poll)
        except StreamRefused as refused:
            # The server refused (no replica set, no privilege): poll from now on.
            if self._want_change_streams is True:
                raise refused.error from None
            logger.info("change streams unavailable (%s): wait() polls instead", refused.error)
            self.change_streams = False
            return poll(timeout)

    def close(self) -> None:
        """Close the client if this store made it (a client passed in is left open)."""
        if self._owns_client:
            self.client.close()
