"""A FastAPI app that starts an order saga per POST and awaits it without blocking.

Run it next to a worker (both in this folder, Redis on localhost)::

    pip install "celery-saga[redis]" fastapi uvicorn
    celery -A orders worker                # terminal 1
    uvicorn main:app                       # terminal 2
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"order_id": "A-1", "sku": "book", "quantity": 1, "amount": 20}'
    curl localhost:8000/orders/<saga_id>/progress   # one JSON line per change

- ``POST /orders`` starts the saga (`Saga.arun`) and awaits its outcome
  (`SagaResult.aget`): 200 with the output, 409 if it was compensated, 500 if a
  compensation failed, 202 with the saga id if it is still running after ``wait``
  seconds (the query parameter, default 10).
- ``GET /orders/{saga_id}`` gives the status and the steps as they are now.
- ``GET /orders/{saga_id}/progress`` streams its progress as JSON lines
  (`SagaResult.watch`) and ends when the saga is finished.

Every store call runs in a worker thread and every wait is a notification (Redis,
PostgreSQL) or a poll in a thread, so one process serves many orders at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, StreamingResponse
from orders import order_saga
from pydantic import BaseModel, Field

from celery_saga import SagaCompensated, SagaExecution, SagaFailed, SagaResult

app = FastAPI(title="orders")


class Order(BaseModel):
    """What a customer orders."""

    order_id: str = Field(min_length=1, max_length=64)
    sku: str
    quantity: int = Field(gt=0)
    amount: float = Field(gt=0)


@app.post("/orders")
async def create_order(order: Order, wait: float = Query(10.0, ge=0, le=60)) -> JSONResponse:
    """Start the order saga (once per order id) and answer with its outcome."""
    result = await order_saga.arun(idempotency_key=f"order-{order.order_id}", **order.model_dump())
    body: dict[str, Any] = {"saga_id": result.saga_id}
    try:
        output = await result.aget(timeout=wait)
    except SagaCompensated as exc:
        return JSONResponse({**body, "status": "compensated", "error": str(exc)}, status_code=409)
    except SagaFailed as exc:
        return JSONResponse({**body, "status": "failed", "error": str(exc)}, status_code=500)
    except TimeoutError:
        return JSONResponse(
            {**body, "status": "running", "progress": f"/orders/{result.saga_id}/progress"},
            status_code=202,
        )
    return JSONResponse({**body, "status": "completed", "output": output})


async def _read(saga_id: str) -> tuple[SagaResult, SagaExecution]:
    """The handle and the stored execution; 400 for a malformed id, 404 for an unknown one."""
    try:
        result = order_saga.result(saga_id)
    except ValueError as exc:  # InvalidSagaId says what a saga id looks like
        raise HTTPException(status_code=400, detail=str(exc)) from None
    execution = await asyncio.to_thread(lambda: result.execution)  # a store read: in a thread
    if execution is None:
        raise HTTPException(status_code=404, detail=f"no order saga {saga_id}")
    return result, execution


@app.get("/orders/{saga_id}")
async def order_status(saga_id: str) -> dict[str, Any]:
    """The saga's status and its steps, as stored now."""
    _, execution = await _read(saga_id)
    return {
        "saga_id": saga_id,
        "status": execution.status.value,
        "steps": [
            {"index": s.index, "task_name": s.task_name, "status": s.status.value}
            for s in execution.steps
        ],
    }


@app.get("/orders/{saga_id}/progress")
async def order_progress(saga_id: str) -> StreamingResponse:
    """One JSON line per change of a step or of the saga, until the saga is finished."""
    result, _ = await _read(saga_id)

    async def lines() -> AsyncIterator[str]:
        async for update in result.watch():
            yield json.dumps(update.to_dict()) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
