"""The read-only pages: the list of executions, one execution, the definitions, health.

Handlers are plain functions (Starlette runs them in its thread pool), since every
store call blocks. Ids and filters are checked before a store sees them: a bad one
is a 404 or a 400 that says why, never a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from celery_saga import registry
from celery_saga.backends.base import Page
from celery_saga.errors import InvalidSagaId, SagaError, StoreNotFound, read_error
from celery_saga.ids import validate_saga_id
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepStatus, now
from celery_saga.views import step_view
from celery_saga_web.inputs import step_inputs
from celery_saga_web.pictures import definition_graph_svg, execution_graph_svg, timeline_svg
from celery_saga_web.query import bad_request, parse_list_query
from celery_saga_web.state import web_state

#: Children shown on an execution page (the rest through the list page's parent filter).
CHILDREN_SHOWN = 50
#: Notices shown after an action redirected back to the execution page.
DONE = {
    "retry": "Retry asked for: compensation resumed.",
    "cancel": "Cancelled: the done steps are being compensated.",
    "revert": "Revert asked for: the steps are being compensated in reverse order.",
    "resolve": "The step's compensation was marked as done by hand.",
    "complete": "The external step was completed.",
    "fail": "The external step was failed: the saga compensates.",
}


def unavailable(store: object, exc: Exception) -> HTTPException:
    """A 503 saying that the store does not answer, and what it said."""
    return HTTPException(
        503, f"the saga store {store!r} does not answer ({type(exc).__name__}: {exc}); try again"
    )


def saga_id_of(request: Request) -> str:
    """The path's saga id, validated: 404 (saying why) for anything that is not one."""
    try:
        return validate_saga_id(request.path_params["saga_id"])
    except InvalidSagaId as exc:
        raise HTTPException(404, f"no such saga: {exc}") from None


def list_page(request: Request) -> Response:
    """``/``: executions newest first, filtered by status, name, age and parent, paged."""
    web = web_state(request)
    query = parse_list_query(request.query_params)
    notice = None
    try:
        page = web.store.list(**query.store_arguments(now()))
    except StoreNotFound as exc:
        page, notice = Page([], None), f"No saga store at {web.store!r} yet: {exc}"
    except ValueError as exc:  # what the store's own argument checks refuse
        raise bad_request(str(exc)) from None
    except TypeError as exc:
        if "parent_id" not in str(exc):
            raise
        raise bad_request(
            f"{web.store!r} cannot list the children of an execution: upgrade its package"
        ) from None
    except Exception as exc:  # the store is down or unreachable: say so, not "a bug"
        raise unavailable(web.store, exc) from exc
    rows = [
        {
            "summary": s,
            "took": (s.finished_at or now()) - s.created_at,
            "finished": s.finished_at is not None,
        }
        for s in page.items
    ]
    return web.page(
        request,
        "list.html",
        {
            "query": query,
            "rows": rows,
            "next_cursor": page.cursor,
            "statuses": [s.value for s in SagaStatus],
            "notice": notice,
        },
    )


def load(request: Request, saga_id: str) -> SagaExecution:
    """The stored execution, or 404; a record that cannot be read is a 500 saying why."""
    web = web_state(request)
    try:
        execution = web.store.get(saga_id)
    except StoreNotFound as exc:
        raise HTTPException(
            404, f"no saga {saga_id}: no saga store at {web.store!r} ({exc})"
        ) from None
    except SagaError as exc:  # a damaged record, or one of a newer schema
        raise HTTPException(500, read_error(saga_id, exc)) from exc
    except Exception as exc:
        raise unavailable(web.store, exc) from exc
    if execution is None:
        raise HTTPException(404, f"no saga {saga_id} in {web.store!r}")
    return execution


def _children(request: Request, saga_id: str) -> tuple[list[Any], bool, str | None]:
    web = web_state(request)
    try:
        page = web.store.list(parent_id=saga_id, limit=CHILDREN_SHOWN)
    except Exception as exc:  # an older store without parent_id, or an unreachable one
        return [], False, f"the children cannot be listed: {exc}"
    return page.items, page.cursor is not None, None


def _actions(execution: SagaExecution) -> dict[str, Any]:
    """Which operator actions apply to this execution now (the forms the page shows)."""
    status = execution.status
    external = [
        r.task_name
        for r in execution.steps
        if r.kind == StepKind.EXTERNAL.value
        and r.status is StepStatus.RUNNING
        and status is SagaStatus.RUNNING
    ]
    return {
        "retry": status
        in (SagaStatus.FAILED, SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PENDING),
        "cancel": status in (SagaStatus.RUNNING, SagaStatus.PENDING),
        "revert": status is SagaStatus.COMPLETED,
        "resolve": [r.index for r in execution.steps if r.status is StepStatus.COMPENSATION_FAILED],
        "external": external,
    }


def execution_page(request: Request) -> Response:
    """``/sagas/{id}``: graph, timeline, steps with their data; reloads while unfinished."""
    web = web_state(request)
    saga_id = saga_id_of(request)
    execution = load(request, saga_id)
    children, more_children, children_problem = _children(request, saga_id)
    inputs = step_inputs(execution, web.celery_app)
    steps = [
        {"record": record, "view": step_view(record), "input": inputs.get(record.index)}
        for record in execution.steps
    ]
    finished = execution.status.is_terminal
    refresh = not finished and request.query_params.get("refresh") != "off"
    done = request.query_params.get("done")
    return web.page(
        request,
        "execution.html",
        {
            "ex": execution,
            "took": (execution.finished_at or now()) - execution.created_at,
            "steps": steps,
            "graph": execution_graph_svg(execution),
            "timeline": timeline_svg(execution),
            "children": children,
            "more_children": more_children,
            "children_problem": children_problem,
            "refresh": refresh,
            "finished": finished,
            "actions": _actions(execution) if web.allow_actions else None,
            "done": DONE.get(done or ""),
        },
        forms=web.allow_actions,
    )


def definitions_page(request: Request) -> Response:
    """``/definitions``: every saga registered on the Celery app, with its graph."""
    web = web_state(request)
    sagas = (
        registry.sagas_of(web.celery_app)
        if web.celery_app is not None
        else dict(sorted(registry.registered().items()))
    )
    items: list[dict[str, Any]] = []
    for name, saga in sagas.items():
        steps: int | None = None
        problem: str | None = None
        try:
            steps = len(saga.definition.steps)
        except Exception as exc:  # a definition that cannot compile: say so
            problem = f"{type(exc).__name__}: {exc}"
        items.append(
            {
                "name": name,
                "defined_in": saga.defined_in,
                "steps": steps,
                "problem": problem,
                "graph": definition_graph_svg(saga) if problem is None else None,
            }
        )
    return web.page(request, "definitions.html", {"items": items})


def healthz(request: Request) -> Response:
    """``/healthz``: 200 when the store answers a one-item listing, else 503."""
    web = web_state(request)
    try:
        web.store.list(limit=1)
    except StoreNotFound:
        return PlainTextResponse("ok (the store holds no saga yet)\n")
    except Exception as exc:
        return PlainTextResponse(
            f"unavailable: the store does not answer ({type(exc).__name__}: {exc})\n",
            status_code=503,
        )
    return PlainTextResponse("ok\n")
