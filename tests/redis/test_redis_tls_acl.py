"""`rediss://` (TLS) and ACL users given in the URL, on redis-servers of our own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from redis_support import AclUser, TlsRedis

from celery_saga.backends import SagaBackend
from celery_saga.models import SagaStatus
from celery_saga.testing import BackendConformance, Requirements
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend


class Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True

    @property
    def notifies_completion_async(self) -> bool:
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        return True

    @property
    def finishes_in_one_round_trip(self) -> bool:
        return True


class NotifiesAndExpires(Notifies):
    @property
    def expires_finished(self) -> bool:
        return True


def _drop(store: RedisSagaBackend) -> None:
    keys = list(store.client.scan_iter(match=f"{store.keys.prefix}*", count=1000))
    if keys:
        store.client.delete(*keys)


# -- TLS -------------------------------------------------------------------------------------


class TestRedisOverTlsConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self, tls_redis: TlsRedis, unique: str) -> Iterator[SagaBackend]:
        store = RedisSagaBackend.from_url(tls_redis.url(f"prefix=t-{unique}:"))
        yield store
        _drop(store)
        store.close()


def test_rediss_url_connects_over_tls_and_verifies_the_server(
    tls_redis: TlsRedis, unique: str
) -> None:
    store = RedisSagaBackend.from_url(tls_redis.url(f"prefix=t-{unique}:"))
    try:
        pool = store.client.connection_pool
        assert pool.connection_class is redis.SSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == str(tls_redis.ca)
        execution = make_execution()
        store.create(execution)
        assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
        got = store.wait(execution.saga_id, timeout=10)
        assert got is not None and got.status is SagaStatus.COMPLETED
        assert [s.saga_id for s in store.list(status="completed").items] == [execution.saga_id]
        _drop(store)
    finally:
        store.close()

    # Without our CA the server's certificate is refused.
    untrusted = RedisSagaBackend.from_url(
        f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=required&prefix=t-{unique}:"
    )
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            untrusted.get("any")
    finally:
        untrusted.close()
    # And the server speaks nothing but TLS.
    plain = RedisSagaBackend.from_url(
        f"redis://127.0.0.1:{tls_redis.port}/0?prefix=t-{unique}:&socket_timeout=5"
    )
    try:
        with pytest.raises(redis.ConnectionError):
            plain.get("any")
    finally:
        plain.close()


#: Rounds of the close-while-reading test: each closes a store whose wait connection is
#: being read, then connects anew at once (the race it guards against needs few).
CLOSE_ROUNDS = 40


def test_closing_a_store_while_its_wait_connection_is_read_disturbs_no_other_connection(
    tls_redis: TlsRedis, unique: str
) -> None:
    """`close()` ends the listener's read before the connection's descriptor is freed.

    A read left running in the listener's thread would read, through OpenSSL, whatever
    socket the next connection got under that descriptor number: its TLS handshake then
    fails with a wrong version number, or the server sees a bad record.
    """
    failures: list[str] = []
    for _ in range(CLOSE_ROUNDS):
        store = RedisSagaBackend.from_url(tls_redis.url(f"prefix=t-{unique}:"))
        execution = make_execution()
        store.create(execution)
        assert store.wait(execution.saga_id, timeout=0.01) is None  # the listener reads now
        store.close()
        fresh = [
            redis.Redis(
                host="127.0.0.1", port=tls_redis.port, ssl=True,
                ssl_ca_certs=str(tls_redis.ca), socket_timeout=5,
            )
            for _ in range(3)
        ]  # fmt: skip
        for client in fresh:
            try:
                assert client.ping()
            except redis.ConnectionError as exc:
                failures.append(repr(exc))
            finally:
                client.close()
    cleanup = RedisSagaBackend.from_url(tls_redis.url(f"prefix=t-{unique}:"))
    _drop(cleanup)
    cleanup.close()
    assert failures == []


# -- ACL users ------------------------------------------------------------------------------


class TestRedisAclUserConformance(BackendConformance):
    """The whole contract as a user allowed only the keys and channels of its prefix."""

    requirements = NotifiesAndExpires()

    @pytest.fixture
    def backend(self, acl_user: AclUser) -> Iterator[SagaBackend]:
        store = RedisSagaBackend.from_url(acl_user.url())
        yield store
        store.close()

    @pytest.fixture
    def store_with_retention(self, acl_user: AclUser) -> Iterator[Callable[[int], SagaBackend]]:
        """Stores with ``&ttl=<seconds>``, as the ACL user (its keys are dropped afterwards)."""
        made: list[RedisSagaBackend] = []

        def make(seconds: int) -> SagaBackend:
            store = RedisSagaBackend.from_url(f"{acl_user.url()}&ttl={seconds}")
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()


def test_acl_user_in_the_url_is_the_one_connected(acl_user: AclUser) -> None:
    store = RedisSagaBackend.from_url(acl_user.url())
    try:
        assert store.client.acl_whoami() == acl_user.name
        execution = make_execution(idempotency_key="acl")
        assert store.create(execution) == (execution, True)
        assert store.find_by_idempotency_key("acl") is not None
        assert acl_user.password not in repr(store)
    finally:
        store.close()
    # The user really is confined to its prefix: another prefix is refused.
    outside = RedisSagaBackend.from_url(acl_user.url().replace(acl_user.prefix, "elsewhere:"))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            outside.create(make_execution())
    finally:
        outside.close()


@pytest.mark.parametrize("wrong", ["password", "user"])
def test_wrong_credentials_fail_with_a_clear_error(acl_user: AclUser, wrong: str) -> None:
    url = acl_user.url(password="not-the-password")
    if wrong == "user":
        url = url.replace(acl_user.name, "nobody-here")
    store = RedisSagaBackend.from_url(url)
    try:
        with pytest.raises(redis.AuthenticationError) as info:
            store.get("any")
    finally:
        store.close()
    message = str(info.value)
    assert "invalid username-password pair" in message
    assert "not-the-password" not in message and "not-the-password" not in repr(store)
