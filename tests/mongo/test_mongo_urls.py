"""Reading store URLs: our options out, the rest to pymongo untouched (no server needed)."""

from __future__ import annotations

import pytest

from celery_saga.backends import backend_class, backend_from_url, installed_schemes
from celery_saga_mongo import MongoSagaBackend
from celery_saga_mongo.urls import parse_flag, redact, split_url


def test_store_options_are_removed_and_the_rest_kept_verbatim() -> None:
    parsed = split_url(
        "mongodb://u:p%40ss@h1:27017,h2:27018/orders?replicaSet=rs0&collection_prefix=s_"
        "&readPreferenceTags=dc:ny,rack:1&change_streams=false&w=majority"
    )
    assert parsed.database == "orders"
    assert parsed.options == {"collection_prefix": "s_", "change_streams": "false"}
    assert parsed.client_url == (
        "mongodb://u:p%40ss@h1:27017,h2:27018/orders?replicaSet=rs0"
        "&readPreferenceTags=dc:ny,rack:1&w=majority"
    )


def test_semicolon_delimited_options_stay_semicolon_delimited() -> None:
    parsed = split_url("mongodb://h/db?replicaSet=rs0;collection_prefix=x_;w=1")
    assert parsed.client_url == "mongodb://h/db?replicaSet=rs0;w=1"
    assert parsed.options == {"collection_prefix": "x_"}


def test_no_path_means_the_default_database() -> None:
    assert split_url("mongodb://h:27017").database is None
    assert split_url("mongodb://h:27017/").database is None
    assert split_url("mongodb://h:27017/?collection_prefix=a_").client_url == "mongodb://h:27017/"
    store = MongoSagaBackend.from_url("mongodb://127.0.0.1:1/?collection_prefix=a_")
    try:
        assert store.database_name == "celery_saga"
        assert store.executions.name == "a_executions"
    finally:
        store.close()


def test_from_url_builds_a_lazy_client_with_database_and_prefix() -> None:
    store = MongoSagaBackend.from_url(
        "mongodb://127.0.0.1:1/sagas_db?collection_prefix=app_&serverSelectionTimeoutMS=1500"
    )
    try:
        assert store.database_name == "sagas_db"
        assert store.executions.full_name == "sagas_db.app_executions"
        assert store.client.options.server_selection_timeout == 1.5
    finally:
        store.close()


def test_explicit_keywords_win_over_the_url_and_the_rest_go_to_pymongo() -> None:
    store = MongoSagaBackend.from_url(
        "mongodb://127.0.0.1:1/a?collection_prefix=url_",
        database="b",
        collection_prefix="kw_",
        connectTimeoutMS=1234,
    )
    try:
        assert store.executions.full_name == "b.kw_executions"
        assert store.client.options.pool_options.connect_timeout == 1.234
    finally:
        store.close()


def test_an_empty_prefix_is_allowed() -> None:
    store = MongoSagaBackend.from_url("mongodb://127.0.0.1:1/db?collection_prefix=")
    try:
        assert store.executions.name == "executions"
    finally:
        store.close()


def test_a_client_can_be_passed_and_is_not_closed_by_the_store() -> None:
    from pymongo import MongoClient

    client: MongoClient[dict] = MongoClient("mongodb://127.0.0.1:1/fromclient", connect=False)
    try:
        store = MongoSagaBackend(client=client)
        assert store.database_name == "fromclient"
        store.close()
        assert client.get_database("x").name == "x"  # still usable
        with pytest.raises(TypeError, match="client options"):
            MongoSagaBackend(client=client, maxPoolSize=3)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost/0", "not a MongoDB URL"),
        ("mongodb://h/db.coll", "contains '.'"),
        ("mongodb://h/bad$db", "not a valid MongoDB database name"),
        ("mongodb://h/db?collection_prefix=$x", "invalid collection name"),
        ("mongodb://h/db?collection_prefix=system.", "invalid collection name"),
        ("mongodb://h/db?change_streams=maybe", "true, false or auto"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MongoSagaBackend.from_url(url)


def test_url_needs_exactly_one_of_url_or_client() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MongoSagaBackend()


def test_flags() -> None:
    assert parse_flag("auto", "x") is None
    assert parse_flag(None, "x") is None
    assert parse_flag("TRUE", "x") is True
    assert parse_flag("0", "x") is False


def test_repr_and_errors_hide_the_password() -> None:
    assert redact("mongodb://user:secret@h/db?x=1") == "mongodb://user:***@h/db?x=1"
    store = MongoSagaBackend.from_url("mongodb://user:secret@127.0.0.1:1/db")
    try:
        assert "secret" not in repr(store)
        assert "user:***@" in repr(store)
    finally:
        store.close()
    with pytest.raises(ValueError) as info:
        split_url("postgres://user:secret@h/db")
    assert "secret" not in str(info.value)


def test_entry_points_serve_both_schemes() -> None:
    schemes = installed_schemes()
    assert schemes["mongodb"] == "celery_saga_mongo:MongoSagaBackend"
    assert schemes["mongodb+srv"] == "celery_saga_mongo:MongoSagaBackend"
    assert backend_class("mongodb+srv") is MongoSagaBackend
    store = backend_from_url("mongodb://127.0.0.1:1/viaregistry?collection_prefix=r_")
    try:
        assert isinstance(store, MongoSagaBackend)
        assert store.executions.full_name == "viaregistry.r_executions"
    finally:
        store.close()


def test_srv_urls_are_split_like_plain_ones() -> None:
    parsed = split_url("mongodb+srv://u:p@cluster0.example.net/prod?collection_prefix=s_&w=1")
    assert parsed.client_url == "mongodb+srv://u:p@cluster0.example.net/prod?w=1"
    assert parsed.database == "prod"
