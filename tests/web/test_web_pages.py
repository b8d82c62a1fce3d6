"""Every page of the web view against a real store and sagas run by a real worker."""

from __future__ import annotations

import re

from web_sagas import SCRIPT_ERROR, SCRIPT_OUTPUT
from web_support import HTML, WebEnv, listed

from celery_saga.models import SagaStatus


def test_list_shows_every_execution_with_status_and_whole_error(web_env: WebEnv) -> None:
    client = web_env.client()
    response = client.get("/", headers=HTML)
    assert response.status_code == 200
    ids = listed(response.text)
    for key in ("completed", "compensated", "failed", "running", "parent", "child"):
        assert web_env.ids[key] in ids, key
    body = response.text
    assert 'class="status status-compensated">compensated' in body
    assert 'class="status status-failed">failed' in body
    assert 'class="status status-running">running' in body
    # The whole error, escaped (never cut at 60 characters like the CLI's list).
    error = web_env.store.get(web_env.ids["compensated"]).error  # type: ignore[union-attr]
    assert error and len(error) > 60
    assert SCRIPT_ERROR.replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;") in body
    assert SCRIPT_ERROR not in body


def test_list_filters_status_name_age_and_parent(web_env: WebEnv) -> None:
    client = web_env.client()
    order = web_env.sagas.order.name
    by_status = listed(client.get("/", params={"status": "compensated"}).text)
    assert web_env.ids["compensated"] in by_status
    assert web_env.ids["completed"] not in by_status
    for saga_id in by_status:
        assert web_env.status(saga_id) is SagaStatus.COMPENSATED
    by_name = listed(client.get("/", params={"name": order}).text)
    assert set(by_name) >= {web_env.ids["completed"], web_env.ids["compensated"]}
    assert web_env.ids["failed"] not in by_name
    both = listed(client.get("/", params={"name": order, "status": "completed"}).text)
    assert web_env.ids["completed"] in both and web_env.ids["compensated"] not in both
    newer = listed(client.get("/", params={"name": order, "newer": "1h"}).text)
    assert web_env.ids["completed"] in newer
    assert listed(client.get("/", params={"name": order, "older": "1h"}).text) == []
    children = listed(client.get("/", params={"parent": web_env.ids["parent"]}).text)
    assert children == [web_env.ids["child"]]
    # Upper case is accepted, as the CLI accepts it.
    assert listed(client.get("/", params={"status": "COMPENSATED", "name": order}).text) == [
        web_env.ids["compensated"]
    ]


def test_list_pages_by_the_stores_cursor(web_env: WebEnv) -> None:
    client = web_env.client()
    name = web_env.sagas.child.name  # the child saga: run a few more of it directly
    extra = [web_env.sagas.child.run(n=i).saga_id for i in range(4)]
    for saga_id in extra:
        web_env.wait_status(saga_id, "completed")
    expected = [s.saga_id for s in web_env.store.list(name=name, limit=100).items]
    assert len(expected) == 5
    seen: list[str] = []
    url = f"/?name={name}&limit=2"
    pages = 0
    while url:
        response = client.get(url, headers=HTML)
        assert response.status_code == 200
        page = listed(response.text)
        assert 0 < len(page) <= 2
        seen += page
        pages += 1
        found = re.search(r'id="next-page" href="(/\?[^"]+)"', response.text)
        url = found[1].replace("&amp;", "&") if found else ""
        if url:
            assert f"name={name}" in url and "limit=2" in url  # filters kept on the next page
    assert pages == 3
    assert seen == expected  # every execution once, newest first


def test_execution_page_of_a_completed_saga(web_env: WebEnv) -> None:
    client = web_env.client()
    saga_id = web_env.ids["completed"]
    response = client.get(f"/sagas/{saga_id}", headers=HTML)
    assert response.status_code == 200
    body = response.text
    assert 'id="saga-status" class="status status-completed">completed' in body
    assert '<div class="picture graph" id="graph"><svg' in body
    assert '<div class="picture timeline" id="timeline"><svg' in body
    for task in ("reserve", "charge", "notify"):
        assert f"{web_env.sagas.tag}.{task}" in body
    # A finished saga's page does not reload itself.
    assert 'http-equiv="refresh"' not in body
    # Inputs derived from the definition: charge saw the reservation made by reserve.
    step1 = body[body.index('id="step-1"') : body.index('id="step-2"')]
    assert "&#34;reservation&#34;: &#34;R-A-1&#34;" in step1
    assert "derived from the saga&#39;s definition" in step1
    # The output with a script in it is shown as text.
    assert SCRIPT_OUTPUT not in body
    assert "&lt;script&gt;alert(&#39;output&#39;)&lt;/script&gt;" in body
    # Compensation data is shown (the output, for a step without explicit data).
    assert 'class="compensation-data"' in body
    # Read-only: no action form, no CSRF cookie.
    assert '<form class="action"' not in body
    assert "saga_web_csrf" not in response.headers.get("set-cookie", "")


def test_execution_page_of_a_compensated_saga(web_env: WebEnv) -> None:
    client = web_env.client()
    body = client.get(f"/sagas/{web_env.ids['compensated']}", headers=HTML).text
    assert 'id="saga-status" class="status status-compensated">compensated' in body
    assert '<pre class="error" id="saga-error">' in body
    assert SCRIPT_ERROR not in body
    assert "card declined &lt;script&gt;" in body
    step0 = body[body.index('id="step-0"') : body.index('id="step-1"')]
    assert 'class="status status-compensated">compensated' in step0
    assert f"{web_env.sagas.tag}.release" in step0
    assert "1 attempt" in step0  # the compensation's attempts
    # The graph colours compensated steps with the compensated colour of the table.
    assert 'data-status="compensated"' in body


def test_execution_page_of_a_failed_saga_shows_the_compensation_error(web_env: WebEnv) -> None:
    body = web_env.client().get(f"/sagas/{web_env.ids['failed']}", headers=HTML).text
    assert 'id="saga-status" class="status status-failed">failed' in body
    assert "compensation_failed" in body
    assert "the bank is down for" in body
    assert 'http-equiv="refresh"' not in body


def test_execution_page_of_a_running_saga_reloads_until_it_is_done(web_env: WebEnv) -> None:
    client = web_env.client()
    saga_id = web_env.ids["running"]
    body = client.get(f"/sagas/{saga_id}", headers=HTML).text
    assert 'id="saga-status" class="status status-running">running' in body
    assert '<meta http-equiv="refresh" content="3">' in body
    step2 = body[body.index('id="step-2"') :]
    assert "not reached" in step2
    paused = client.get(f"/sagas/{saga_id}?refresh=off", headers=HTML).text
    assert 'http-equiv="refresh"' not in paused
    assert "Auto-reload paused" in paused


def test_parent_and_child_pages_link_to_each_other(web_env: WebEnv) -> None:
    client = web_env.client()
    parent, child = web_env.ids["parent"], web_env.ids["child"]
    parent_page = client.get(f"/sagas/{parent}", headers=HTML).text
    children = parent_page[parent_page.index('<ul id="children">') :]
    assert f'<a href="/sagas/{child}">' in children
    assert f'child saga <a href="/sagas/{child}">' in parent_page  # on the step row too
    child_page = client.get(f"/sagas/{child}", headers=HTML).text
    assert f'<a id="parent-link" href="/sagas/{parent}">' in child_page
    assert "(step 1)" in child_page


def test_definitions_page_draws_every_saga_of_the_app(web_env: WebEnv) -> None:
    response = web_env.client().get("/definitions", headers=HTML)
    assert response.status_code == 200
    body = response.text
    for name in web_env.sagas.names():
        assert f"<h2>{name}</h2>" in body
    assert body.count('<div class="picture graph"><svg') == len(web_env.sagas.names())
    assert "manager_approval" in body  # the external step is drawn


def test_metrics_count_what_the_store_holds(web_env: WebEnv) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    response = web_env.client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    counts = {
        (s.labels["saga"], s.labels["status"]): s.value
        for s in families["celery_saga_executions"].samples
    }
    for name in web_env.sagas.names():
        for status in SagaStatus:
            stored = len(web_env.store.list(name=name, status=status, limit=1000).items)
            assert counts.get((name, status.value), 0) == stored, (name, status)
    order = web_env.sagas.order.name
    assert counts[(order, "compensated")] >= 1
    # Durations: one observation per finished forward attempt of each step.
    steps = families["celery_saga_step_duration_seconds"]
    count = {
        s.labels["task"]: s.value
        for s in steps.samples
        if s.name.endswith("_count") and s.labels["saga"] == order
    }
    finished_orders = [
        web_env.store.get(s.saga_id)
        for s in web_env.store.list(name=order, limit=1000).items
        if s.finished_at is not None
    ]
    reserve = f"{web_env.sagas.tag}.reserve"
    assert count[reserve] == sum(
        1 for e in finished_orders if e and e.step(0).finished_at is not None
    )
    comp = families["celery_saga_compensation_duration_seconds"]
    assert any(
        s.name.endswith("_count") and s.labels["task"] == f"{web_env.sagas.tag}.release"
        for s in comp.samples
    )
    assert families["celery_saga_metrics_window_seconds"].samples[0].value == 3600.0


def test_healthz(web_env: WebEnv) -> None:
    response = web_env.client().get("/healthz")
    assert response.status_code == 200
    assert response.text.startswith("ok")


def test_every_response_carries_the_security_headers(web_env: WebEnv) -> None:
    client = web_env.client()
    for url in ("/", f"/sagas/{web_env.ids['completed']}", "/definitions", "/metrics", "/nope"):
        response = client.get(url, headers=HTML)
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp  # no script at all
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script" not in response.text


def test_a_running_saga_finishes_and_its_page_stops_reloading(web_env: WebEnv) -> None:
    client = web_env.client()
    result = web_env.waiting_for_approval()
    assert 'http-equiv="refresh"' in client.get(f"/sagas/{result.saga_id}").text
    assert result.complete_step("manager_approval", {"approved_by": "ann"})
    web_env.wait_status(result.saga_id, "completed")
    body = client.get(f"/sagas/{result.saga_id}").text
    assert 'http-equiv="refresh"' not in body
    assert "&#34;approved_by&#34;: &#34;ann&#34;" in body
