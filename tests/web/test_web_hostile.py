"""Hostile input to the web view: a clear 4xx that says what was wrong, never a 500,
nothing shown unescaped, nothing changed in the store."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from web_support import HTML, TestClient, WebEnv

from celery_saga.backends.helpers import encode_cursor

SAGA = "3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d"  # well formed, never stored


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_IDS = [
    "nope",
    "<script>alert(1)</script>",
    SAGA + "0",
    SAGA[:-1] + "g",
    "%00" + SAGA[3:],
    "../../etc/passwd",
    "x" * 3000,
    "' OR 1=1 --",
    "%E2%80%AE" + SAGA[1:],
]

BAD_CURSORS = [
    "abc",
    "!!!",
    "<script>",
    _b64(b"not json"),
    _b64(b'{"a": 1}'),
    _b64(b"[1, 2, 3]"),
    _b64(b'[null, "x"]'),
    _b64(json.dumps([1.5, "not-a-saga-id"]).encode()),
    _b64(b'[NaN, "' + SAGA.encode() + b'"]'),
    _b64(b'[Infinity, "' + SAGA.encode() + b'"]'),
    _b64(b'[1e999, "' + SAGA.encode() + b'"]'),
    _b64(b"\xff\xfe\x00"),
    "A" * 600,
]

BAD_FILTERS = [
    {"status": "bogus"},
    {"status": "<script>alert(1)</script>"},
    {"newer": "yesterday"},
    {"older": "-5m"},
    {"newer": "9" * 40 + "w"},
    {"parent": "not-an-id"},
    {"parent": "<script>"},
    {"name": "order\x00"},
    {"name": "x" * 300},
    {"limit": "0"},
    {"limit": "100000"},
    {"limit": "ten"},
]


@pytest.fixture
def untouched(web_env: WebEnv):  # type: ignore[no-untyped-def]
    """Check, after the test, that no stored execution changed."""
    before = web_env.snapshot()
    yield
    assert web_env.snapshot() == before


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_bad_saga_id_is_a_404_that_says_why(web_env: WebEnv, bad: str) -> None:
    client = web_env.client()
    response = client.get(f"/sagas/{bad}", headers=HTML)
    assert response.status_code in (404, 414), response.text
    if response.status_code == 404:
        assert any(why in response.text for why in ("is not a saga id", "no page at"))
    assert "<script>alert" not in response.text


@pytest.mark.usefixtures("untouched")
def test_an_unknown_saga_is_a_404(web_env: WebEnv) -> None:
    response = web_env.client().get(f"/sagas/{SAGA}", headers=HTML)
    assert response.status_code == 404
    assert f"no saga {SAGA}" in response.text
    # An upper-case id is the same id (as the CLI reads it).
    upper = web_env.ids["completed"].upper()
    assert web_env.client().get(f"/sagas/{upper}").status_code == 200


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_is_a_400(web_env: WebEnv, cursor: str) -> None:
    response = web_env.client().get(f"/?cursor={quote(cursor)}", headers=HTML)
    assert response.status_code == 400, response.text
    assert "cursor:" in response.text
    assert "<script>" not in response.text


@pytest.mark.usefixtures("untouched")
def test_a_well_formed_cursor_past_the_end_is_an_empty_page(web_env: WebEnv) -> None:
    response = web_env.client().get(f"/?cursor={encode_cursor(0.0, SAGA)}", headers=HTML)
    assert response.status_code == 200
    assert "No executions match these filters" in response.text


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("params", BAD_FILTERS, ids=lambda p: f"{next(iter(p))}")
def test_a_bad_filter_is_a_400_naming_it(web_env: WebEnv, params: dict[str, str]) -> None:
    response = web_env.client().get("/", params=params, headers=HTML)
    assert response.status_code == 400, response.text
    field = next(iter(params))
    assert f"{field}:" in response.text
    assert "<script>" not in response.text


@pytest.mark.usefixtures("untouched")
def test_an_oversized_query_string_is_refused(web_env: WebEnv) -> None:
    client = web_env.client()
    response = client.get("/?name=" + "a" * 5000, headers=HTML)
    assert response.status_code == 414
    assert "4096" in response.text
    response = client.get(f"/sagas/{web_env.ids['completed']}?x=" + "b" * 5000)
    assert response.status_code == 414
    # Just under the limit is served (the long name is refused for what it is: too long).
    response = client.get("/?pad=" + "c" * 4000, headers=HTML)
    assert response.status_code == 200


@pytest.mark.usefixtures("untouched")
def test_script_in_step_output_and_error_is_shown_as_text_everywhere(web_env: WebEnv) -> None:
    client = web_env.client()
    for key in ("completed", "compensated"):
        body = client.get(f"/sagas/{web_env.ids[key]}", headers=HTML).text
        assert "<script" not in body  # not in the table, the graph or the timeline
        assert "&lt;script&gt;" in body
    listing = client.get("/", headers=HTML).text
    assert "<script" not in listing and "&lt;script&gt;" in listing


@pytest.mark.usefixtures("untouched")
def test_unknown_paths_and_methods_are_4xx(web_env: WebEnv) -> None:
    client = web_env.client()
    assert client.get("/no/such/page", headers=HTML).status_code == 404
    assert client.post("/").status_code == 405
    assert client.delete(f"/sagas/{web_env.ids['completed']}").status_code == 405
    # Actions are off here: their paths do not exist.
    assert client.post(f"/sagas/{web_env.ids['failed']}/retry").status_code == 404


def test_a_store_that_does_not_answer_is_a_503_not_a_500() -> None:
    from celery_saga.backends.registry import backend_from_url
    from celery_saga_web import create_app

    store = backend_from_url("redis://127.0.0.1:1/0?socket_connect_timeout=1")  # nobody there
    client = TestClient(create_app(store), raise_server_exceptions=False)
    for url in ("/", f"/sagas/{SAGA}", "/metrics", "/healthz"):
        response = client.get(url, headers=HTML)
        assert response.status_code == 503, (url, response.text[:300])
        assert "does not answer" in response.text
