"""`Runtime`: one saga's definition bound to the store and app it runs on.

Every runtime module takes a `Runtime` first; it is built once per saga object
(and per message, from the saga header, through the registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_saga import registry
from celery_saga.config import backend_for, get_default_backend, setting
from celery_saga.errors import StepOutputError
from celery_saga.response import ensure_json, normalize_result

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend
    from celery_saga.definition import SagaDefinition
    from celery_saga.headers import SagaHeader
    from celery_saga.registry import Saga

_MAX_ERROR = 4000


@dataclass(frozen=True)
class Runtime:
    """A saga's definition together with the store and app it runs on."""

    saga: Saga
    definition: SagaDefinition
    backend: SagaBackend
    #: The store setting `backend` was looked up from (see `Runtime.of`).
    store_setting: Any = field(default=None, compare=False)

    @property
    def app(self) -> Celery:
        """The Celery app the saga's messages are sent on."""
        return self.definition.app

    @classmethod
    def of(cls, saga: Saga) -> Runtime:
        """The runtime of a saga object, kept on it until its definition or store changes.

        The store is looked up again when the app's ``saga_backend`` (or the default
        store) is another object than before: tests give each test a store of its own
        that way, and a cached runtime must not keep writing to the previous one.
        """
        definition = saga.definition
        store_setting = _store_setting(definition.app)
        cached: Runtime | None = saga.__dict__.get("_runtime")
        if (
            cached is None
            or cached.definition is not definition
            or cached.store_setting is not store_setting
        ):
            backend = backend_for(definition.app, saga.backend)
            cached = cls(saga, definition, backend, store_setting)
            saga.__dict__["_runtime"] = cached
        return cached

    @classmethod
    def for_header(cls, header: SagaHeader, app: Celery | None = None) -> Runtime:
        """The runtime of the saga a message belongs to (SagaNotRegistered if unknown here)."""
        return cls.of(registry.lookup(header.saga_name, app))


def _store_setting(app: Celery) -> Any:
    """What an app's store is looked up from: ``saga_backend``, else the default store."""
    configured = setting(app, "saga_backend")
    return configured if configured is not None else get_default_backend()


def describe_error(exc: BaseException) -> str:
    """A one-line description of an exception for the store."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def outcome_of(rt: Runtime, header: SagaHeader, value: Any) -> tuple[dict[str, Any], Any]:
    """A step's return value as (output, compensation data), checked for JSON and size.

    Raises StepOutputError naming the step when either cannot be stored.
    """
    name = rt.definition.step(header.index).task_name
    output, compensation_data = normalize_result(
        value, f"the return value of step {header.index} ({name})"
    )
    text = ensure_json(output, f"the output of step {header.index} ({name})", "step output")
    comp_text = (
        text  # a plain return value is both (see normalize_result): checked once
        if compensation_data is output
        else ensure_json(
            compensation_data,
            f"the compensation data of step {header.index} ({name})",
            "compensation data",
        )
    )
    limit = setting(rt.app, "saga_output_max_bytes")
    size = len(text.encode()) + len(comp_text.encode())
    if limit and size > int(limit):
        raise StepOutputError(
            f"the output of step {header.index} ({name}) is {size} bytes with its compensation "
            f"data, over the saga_output_max_bytes limit of {limit}: keep large data elsewhere "
            "and return a reference to it (or raise the limit)"
        )
    return output, compensation_data
