"""Operator actions over HTTP: each needs the token and the CSRF token, and does what
the CLI's command does; refused (403) or off (404), nothing changes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from web_support import HTML, TOKEN, WebEnv

from celery_saga.models import SagaStatus, StepStatus

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def form_token(client: Any, saga_id: str) -> str:
    """GET the execution page (which sets the CSRF cookie) and read its form token."""
    response = client.get(f"/sagas/{saga_id}", headers=HTML)
    assert response.status_code == 200
    found = _CSRF.search(response.text)
    assert found is not None, "the page has no action form"
    return found[1]


def stored(env: WebEnv, saga_id: str) -> dict[str, Any]:
    execution = env.store.get(saga_id)
    assert execution is not None
    return execution.to_dict()


def test_actions_are_404_when_off_and_nothing_changes(web_env: WebEnv) -> None:
    result, _ = web_env.failed_booking()
    before = stored(web_env, result.saga_id)
    client = web_env.client()
    page = client.get(f"/sagas/{result.saga_id}", headers=HTML).text
    assert "<form" not in page.split("</header>")[1]  # no action form at all
    for action in ("retry", "cancel", "revert", "resolve", "complete", "fail"):
        response = client.post(
            f"/sagas/{result.saga_id}/{action}",
            data={"token": TOKEN, "step": "0", "note": "x"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 404, action
    assert stored(web_env, result.saga_id) == before


def test_create_app_refuses_actions_without_a_token(web_env: WebEnv) -> None:
    from celery_saga_web import create_app

    with pytest.raises(ValueError, match="needs a token"):
        create_app(web_env.store, allow_actions=True)


@pytest.mark.parametrize(
    "how",
    [
        "no token",
        "wrong token",
        "wrong bearer",
        "no csrf",
        "csrf from another cookie",
        "no cookie",
        "forged csrf",
    ],
)
def test_an_action_without_token_and_csrf_is_refused_and_changes_nothing(
    web_env: WebEnv, how: str
) -> None:
    result, _ = web_env.failed_booking()
    saga_id = result.saga_id
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, saga_id)
    data: dict[str, str] = {"token": TOKEN, "csrf": csrf}
    headers: dict[str, str] = {}
    if how == "no token":
        del data["token"]
    elif how == "wrong token":
        data["token"] = TOKEN + "x"
    elif how == "wrong bearer":
        del data["token"]
        headers["authorization"] = "Bearer nope"
    elif how == "no csrf":
        del data["csrf"]
    elif how == "csrf from another cookie":
        other = web_env.client(allow_actions=True, token=TOKEN)
        data["csrf"] = form_token(other, saga_id)  # valid for its cookie, not this one
    elif how == "no cookie":
        client.cookies.clear()
    elif how == "forged csrf":
        data["csrf"] = "0" * 64
    before = stored(web_env, saga_id)
    response = client.post(f"/sagas/{saga_id}/retry", data=data, headers=headers)
    assert response.status_code == 403, response.text
    assert "nothing was changed" in response.text
    assert stored(web_env, saga_id) == before
    assert web_env.status(saga_id) is SagaStatus.FAILED


def test_retry_with_token_and_csrf_compensates_a_failed_saga(web_env: WebEnv) -> None:
    result, key = web_env.failed_booking()
    saga_id = result.saga_id
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, saga_id)
    web_env.sagas.switches.set(key, False)  # the bank is back
    response = client.post(
        f"/sagas/{saga_id}/retry",
        data={"token": TOKEN, "csrf": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/sagas/{saga_id}?done=retry"
    final = web_env.wait_status(saga_id, "compensated")
    assert final.step(0).status is StepStatus.COMPENSATED
    page = client.get(response.headers["location"], headers=HTML).text
    assert "Retry asked for" in page


def test_bearer_header_and_csrf_header_work_as_well(web_env: WebEnv) -> None:
    result = web_env.waiting_for_approval()
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, result.saga_id)
    response = client.post(
        f"/sagas/{result.saga_id}/cancel",
        data={"reason": "customer called"},
        headers={"authorization": f"Bearer {TOKEN}", "x-csrf-token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    final = web_env.wait_status(result.saga_id, "cancelled")
    assert final.error == "cancelled: customer called"


def test_complete_then_revert_an_approval(web_env: WebEnv) -> None:
    result = web_env.waiting_for_approval()
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, result.saga_id)
    post = {"token": TOKEN, "csrf": csrf}
    bad = client.post(
        f"/sagas/{result.saga_id}/complete",
        data={**post, "step": "manager_approval", "output": "[1, 2]"},
        headers=HTML,
    )
    assert bad.status_code == 400 and "JSON object" in bad.text
    unknown = client.post(
        f"/sagas/{result.saga_id}/complete", data={**post, "step": "nope"}, headers=HTML
    )
    assert unknown.status_code == 400 and "no external step named" in unknown.text
    assert web_env.status(result.saga_id) is SagaStatus.RUNNING
    done = client.post(
        f"/sagas/{result.saga_id}/complete",
        data={**post, "step": "manager_approval", "output": '{"approved_by": "ann"}'},
        follow_redirects=False,
    )
    assert done.status_code == 303
    final = web_env.wait_status(result.saga_id, "completed")
    assert final.step(1).output == {"approved_by": "ann"}
    again = client.post(
        f"/sagas/{result.saga_id}/complete",
        data={**post, "step": "manager_approval"},
        headers=HTML,
    )
    assert again.status_code == 409 and "refused" in again.text
    reverted = client.post(
        f"/sagas/{result.saga_id}/revert",
        data={**post, "reason": "order withdrawn"},
        follow_redirects=False,
    )
    assert reverted.status_code == 303
    final = web_env.wait_status(result.saga_id, "reverted")
    assert final.revert_reason == "order withdrawn"


def test_fail_an_external_step_compensates(web_env: WebEnv) -> None:
    result = web_env.waiting_for_approval()
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, result.saga_id)
    response = client.post(
        f"/sagas/{result.saga_id}/fail",
        data={"token": TOKEN, "csrf": csrf, "step": "manager_approval", "error": "rejected"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    final = web_env.wait_status(result.saga_id, "compensated")
    assert "rejected" in (final.step(1).error or "")


def test_resolve_a_failed_compensation_by_hand(web_env: WebEnv) -> None:
    result, _ = web_env.failed_booking()
    saga_id = result.saga_id
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, saga_id)
    page = client.get(f"/sagas/{saga_id}", headers=HTML).text
    assert 'id="action-resolve-0"' in page
    post = {"token": TOKEN, "csrf": csrf}
    before = stored(web_env, saga_id)
    for data, why in (
        ({**post, "step": "abc", "note": "x"}, "is not a step"),
        ({**post, "step": "9", "note": "x"}, "is not a step"),
        ({**post, "step": "0"}, "is required"),
        ({**post, "step": "1", "note": "x"}, "not compensation_failed"),
    ):
        response = client.post(f"/sagas/{saga_id}/resolve", data=data, headers=HTML)
        assert response.status_code in (400, 409), response.text
        assert why in response.text
    assert stored(web_env, saga_id) == before
    response = client.post(
        f"/sagas/{saga_id}/resolve",
        data={**post, "step": "0", "note": "refunded at the bank's desk"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    final = web_env.wait_status(saga_id, "compensated")
    assert "refunded at the bank's desk" in (final.step(0).comp_error or "")


def test_an_action_that_does_not_apply_is_a_409_and_changes_nothing(web_env: WebEnv) -> None:
    saga_id = web_env.ids["completed"]
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, saga_id)
    before = stored(web_env, saga_id)
    for action in ("retry", "cancel"):
        response = client.post(
            f"/sagas/{saga_id}/{action}", data={"token": TOKEN, "csrf": csrf}, headers=HTML
        )
        assert response.status_code == 409, response.text
        assert "completed" in response.text
    assert stored(web_env, saga_id) == before


def test_hostile_action_requests_are_4xx_and_change_nothing(web_env: WebEnv) -> None:
    saga_id = web_env.ids["failed"]
    client = web_env.client(allow_actions=True, token=TOKEN)
    csrf = form_token(client, saga_id)
    post = {"token": TOKEN, "csrf": csrf}
    before = web_env.snapshot()
    cases = [
        (f"/sagas/{saga_id}/explode", {"data": post}, 404),
        ("/sagas/not-a-saga/retry", {"data": post}, 404),
        ("/sagas/3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d/retry", {"data": post}, 404),
        (f"/sagas/{saga_id}/retry", {"content": b"token=" + b"a" * 1_100_000}, 413),
        (
            f"/sagas/{saga_id}/retry",
            {"content": b"\xff\xfe=1", "headers": {"content-type": "text/plain"}},
            415,
        ),
        (f"/sagas/{saga_id}/retry", {"content": b"token=%ff%fe"}, 400),
        (f"/sagas/{saga_id}/retry", {"content": "&".join(f"f{i}=1" for i in range(50))}, 400),
        (f"/sagas/{saga_id}/revert", {"data": {**post, "reason": "r" * 5000}}, 400),
    ]
    for url, kwargs, status in cases:
        headers = {**HTML, **kwargs.pop("headers", {})}
        if "content" in kwargs and "content-type" not in headers:
            headers["content-type"] = "application/x-www-form-urlencoded"
        response = client.post(url, headers=headers, **kwargs)
        assert response.status_code == status, (url, status, response.text[:300])
        assert "<script" not in response.text
    assert web_env.snapshot() == before
