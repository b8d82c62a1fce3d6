"""Classes the Redis tests share (importable: test modules must not import a conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsRedis:
    """A redis-server that only speaks TLS, and the CA that signed its certificate."""

    port: int
    ca: Path

    def url(self, query: str = "") -> str:
        tls = f"ssl_cert_reqs=required&ssl_ca_certs={self.ca}"
        return f"rediss://127.0.0.1:{self.port}/0?{tls}" + (f"&{query}" if query else "")


@dataclass(frozen=True)
class AclUser:
    """A user allowed only the keys and channels under `prefix`."""

    port: int
    name: str
    password: str
    prefix: str

    def url(self, password: str | None = None, db: int = 0) -> str:
        secret = self.password if password is None else password
        return f"redis://{self.name}:{secret}@127.0.0.1:{self.port}/{db}?prefix={self.prefix}"
