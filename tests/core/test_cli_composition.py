"""`celery saga list --parent` and `show` of composed sagas (parent links, step kinds, children)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_saga.backends import MemorySagaBackend
from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_OK, EXIT_USAGE
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepStatus
from celery_saga.testing import make_execution


class Family:
    """A parent saga (task, saga and external steps), three children and a stranger."""

    def __init__(self) -> None:
        self.store = MemorySagaBackend()
        self.app = Celery("cli-composition", broker="memory://", set_as_current=False)
        self.app.conf.update(task_always_eager=True, saga_backend=self.store)
        self.parent = make_execution(name="order")
        self.parent.steps[1].kind, self.parent.steps[1].task_name = StepKind.SAGA.value, "payment"
        self.parent.steps[2].kind, self.parent.steps[2].task_name = "external", "bank.approval"
        self.store.create(self.parent)
        base = time.time() - 100
        self.children = [
            make_execution(
                name="payment", created_at=base + i, parent_id=self.parent.saga_id, parent_step=1
            )
            for i in range(3)
        ]
        self.stranger = make_execution(name="payment", created_at=base + 1.5)
        for execution in [*self.children, self.stranger]:
            self.store.create(execution)
        self.store.update_step(
            self.parent.saga_id,
            1,
            {"status": StepStatus.RUNNING, "attempt": 1, "child_id": self.children[2].saga_id},
        )
        self.store.update_saga(self.children[0].saga_id, {"status": SagaStatus.FAILED})

    def cli(self, *args: str) -> Result:
        """Run `celery saga ...` in-process against this family's app."""
        return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=self.app))

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code == EXIT_OK, result.output
        return json.loads(result.stdout)


@pytest.fixture
def family() -> Family:
    return Family()


def _ids(executions: list[SagaExecution]) -> list[str]:
    return [e.saga_id for e in executions]


def test_list_parent_shows_only_its_children_newest_first(family: Family) -> None:
    p = family.parent.saga_id
    data = family.json("list", "--parent", p)
    assert [item["saga_id"] for item in data["items"]] == _ids(family.children[::-1])
    assert {item["parent_id"] for item in data["items"]} == {p}
    assert data["cursor"] is None
    failed = family.json("list", "--parent", p, "--status", "failed")
    assert [item["saga_id"] for item in failed["items"]] == [family.children[0].saga_id]
    named = family.json("list", "--parent", p, "--name", "order")
    assert named["items"] == []
    everything = family.json("list")
    parents = {item["saga_id"]: item["parent_id"] for item in everything["items"]}
    assert parents[p] is None and parents[family.stranger.saga_id] is None
    assert parents[family.children[1].saga_id] == p

    table = family.cli("list", "--parent", p.upper())  # ids are accepted in upper case too
    assert table.exit_code == EXIT_OK, table.output
    assert all(c.saga_id in table.stdout for c in family.children)
    assert family.stranger.saga_id not in table.stdout and f"{p} " not in table.stdout


def test_list_parent_pages_with_the_cursor(family: Family) -> None:
    p = family.parent.saga_id
    seen: list[str] = []
    cursor: list[str] = []
    while True:
        page = family.json("list", "--parent", p, "--limit", "1", *cursor)
        seen += [item["saga_id"] for item in page["items"]]
        if page["cursor"] is None:
            break
        cursor = ["--cursor", page["cursor"]]
    assert seen == _ids(family.children[::-1])
    text = family.cli("list", "--parent", p, "--limit", "2")
    assert "(more: --cursor " in text.stdout


def test_list_parent_refuses_what_is_not_a_saga_id(family: Family) -> None:
    result = family.cli("list", "--parent", "order-1")
    assert result.exit_code == EXIT_USAGE
    assert "is not a saga id" in result.output
    assert "Traceback" not in result.output


def test_list_status_reverted(family: Family) -> None:
    child = family.children[1].saga_id
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATING, SagaStatus.REVERTED):
        assert family.store.update_saga(child, {"status": status})
    data = family.json("list", "--status", "reverted")
    assert [item["saga_id"] for item in data["items"]] == [child]
    assert [item["status"] for item in data["items"]] == ["reverted"]


def test_show_prints_the_parent_link_step_kinds_and_child_ids(family: Family) -> None:
    p = family.parent.saga_id
    family.store.update_saga(p, {"revert_reason": "customer returned the order"})
    shown = family.cli("show", p)
    assert shown.exit_code == EXIT_OK, shown.output
    lines = shown.stdout.splitlines()
    assert "parent:" not in shown.stdout  # a top-level saga
    assert "  revert reason: customer returned the order" in lines
    step_lines = [line for line in lines if line.startswith("  [")]
    assert "tasks.step0 " in step_lines[0] and "(task)" not in step_lines[0]
    assert "payment (saga)" in step_lines[1]
    assert "bank.approval (external)" in step_lines[2]
    assert f"        child saga: {family.children[2].saga_id}" in lines
    assert shown.stdout.count("child saga:") == 1

    child = family.cli("show", family.children[2].saga_id)
    assert child.exit_code == EXIT_OK, child.output
    assert f"  parent: {p} step 1" in child.stdout.splitlines()
    assert "(saga)" not in child.stdout and "child saga:" not in child.stdout


def test_show_json_carries_the_parent_link_step_kinds_and_child_ids(family: Family) -> None:
    p = family.parent.saga_id
    data = family.json("show", p)
    assert (data["parent_id"], data["parent_step"], data["revert_reason"]) == (None, None, None)
    assert [(s["kind"], s["child_id"]) for s in data["steps"]] == [
        ("task", None),
        ("saga", family.children[2].saga_id),
        ("external", None),
    ]
    child = family.json("show", family.children[0].saga_id)
    assert (child["parent_id"], child["parent_step"], child["status"]) == (p, 1, "failed")
    assert {s["kind"] for s in child["steps"]} == {"task"}


def test_list_parent_on_a_store_of_the_older_contract_says_what_to_do(family: Family) -> None:
    """A third-party store written for celery-saga-core 0.3 has no `parent_id` in `list`."""

    class OlderStore(MemorySagaBackend):
        def list(  # type: ignore[override]
            self,
            *,
            status: SagaStatus | str | None = None,
            name: str | None = None,
            created_before: float | None = None,
            created_after: float | None = None,
            limit: int = 50,
            cursor: str | None = None,
        ) -> Any:
            return super().list(status=status, name=name, limit=limit, cursor=cursor)

    family.app.conf.saga_backend = OlderStore()
    assert family.cli("list").exit_code == EXIT_OK  # without --parent it works as before
    result = family.cli("list", "--parent", family.parent.saga_id)
    assert result.exit_code == EXIT_USAGE
    assert "cannot list the children of an execution" in result.stderr
    assert "Traceback" not in result.output
