"""The URL helpers every store shares (`celery_saga.backends.urls`)."""

from __future__ import annotations

import pytest

from celery_saga.backends.urls import parse_flag, parse_seconds, split_options


@pytest.mark.parametrize(
    ("url", "rest", "options"),
    [
        ("redis://h:6379/0", "redis://h:6379/0", {}),
        ("redis://h/0?prefix=a%3A&ttl=5", "redis://h/0", {"prefix": "a:", "ttl": "5"}),
        (
            "redis://h/0?ssl_cert_reqs=none&prefix=x&health_check_interval=3",
            "redis://h/0?ssl_cert_reqs=none&health_check_interval=3",
            {"prefix": "x"},
        ),
        ("mongodb://h/db?a=1;prefix=p;b=%2F", "mongodb://h/db?a=1;b=%2F", {"prefix": "p"}),
        ("redis://h/0?prefix=a&prefix=b", "redis://h/0", {"prefix": "b"}),
    ],
)
def test_split_options_takes_ours_and_keeps_the_rest_verbatim(
    url: str, rest: str, options: dict[str, str]
) -> None:
    assert split_options(url, {"prefix", "ttl"}) == (rest, options)


@pytest.mark.parametrize(
    ("value", "auto", "expected"),
    [
        ("true", False, True),
        ("ON", False, True),
        ("1", False, True),
        ("no", False, False),
        ("0", False, False),
        (None, False, None),
        (True, False, True),
        ("auto", True, None),
        ("", True, None),
    ],
)
def test_parse_flag(value: str | bool | None, auto: bool, expected: bool | None) -> None:
    assert parse_flag("cluster", value, auto=auto) is expected


@pytest.mark.parametrize(("value", "auto"), [("maybe", False), ("auto", False), ("2", True)])
def test_parse_flag_says_what_it_takes(value: str, auto: bool) -> None:
    with pytest.raises(ValueError, match="the store option cluster must be true"):
        parse_flag("cluster", value, auto=auto)


def test_parse_seconds() -> None:
    assert parse_seconds("ttl", "86400") == 86400.0
    assert parse_seconds("ttl", None) is None
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="ttl must be a number of seconds"):
            parse_seconds("ttl", bad)
