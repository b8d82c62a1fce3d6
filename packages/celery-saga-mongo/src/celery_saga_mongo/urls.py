"""Reading a ``mongodb://`` / ``mongodb+srv://`` URL: our options out, the rest to pymongo.

``mongodb://user:pw@host1,host2/mydb?replicaSet=rs0&collection_prefix=saga_`` names
the database in its path (pymongo also uses it as the default ``authSource``, so
the path is left in the URL handed to `MongoClient`). The query options this
store understands are removed before pymongo sees them, because pymongo warns
about, or refuses, options it does not know. The URL is split the way pymongo
splits it (``?`` first, then the first ``/``), and the remaining options are
passed on byte for byte, so nothing is re-encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from celery_saga.backends.urls import parse_flag as shared_parse_flag
from celery_saga.backends.urls import split_options

SCHEMES = ("mongodb", "mongodb+srv")
#: Query options of the URL that configure this store (the rest go to pymongo).
URL_OPTIONS = frozenset({"collection_prefix", "change_streams", "create_indexes"})
#: The database used when the URL path names none.
DEFAULT_DATABASE = "celery_saga"
#: Characters MongoDB refuses in a database name.
_BAD_DB_CHARS = re.compile(r"[/\\ \"$.\x00]")


@dataclass(frozen=True)
class ParsedUrl:
    """A store URL taken apart."""

    client_url: str
    database: str | None
    options: dict[str, str] = field(default_factory=dict)


def split_url(url: str) -> ParsedUrl:
    """Separate the store's own query options from the URL pymongo will read."""
    if not isinstance(url, str):
        raise TypeError(f"a MongoDB URL must be a string, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(
            f"{redact(url)!r} is not a MongoDB URL: use 'mongodb://host:27017/dbname' or "
            "'mongodb+srv://cluster.example.net/dbname'"
        )
    location, has_query, query = rest.partition("?")
    host_part, _, path = location.partition("/")
    database = unquote_plus(path) if path else None
    if database is not None:
        if "." in database:
            raise ValueError(
                f"the database name {database!r} in the URL contains '.': name only the "
                "database in the path (collections are named by collection_prefix)"
            )
        if _BAD_DB_CHARS.search(database):
            raise ValueError(f"{database!r} is not a valid MongoDB database name")
    client_url, options = split_options(
        f"{scheme}://{host_part}/{path}" + (f"?{query}" if has_query else ""), URL_OPTIONS
    )
    return ParsedUrl(client_url=client_url, database=database, options=options)


def parse_flag(value: str | bool | None, what: str) -> bool | None:
    """``true``/``false`` (and friends) as a bool; ``auto`` or None as None."""
    return shared_parse_flag(what, value, auto=True)


def check_collection_prefix(prefix: object) -> str:
    """A collection prefix may be empty; it must not make an invalid collection name."""
    if not isinstance(prefix, str):
        raise TypeError(f"collection_prefix must be a string, got {prefix!r}")
    if "$" in prefix or "\x00" in prefix or prefix.startswith(("system.", ".")):
        raise ValueError(
            f"collection_prefix {prefix!r} would make an invalid collection name: "
            "avoid '$', NUL, and a leading '.' or 'system.'"
        )
    return prefix


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for reprs and error messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    location, has_query, query = rest.partition("?")
    host_part, slash, path = location.partition("/")
    userinfo, at, hosts = host_part.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        host_part = f"{user}:***@{hosts}"
    return f"{scheme}://{host_part}{slash}{path}{has_query}{query}"
