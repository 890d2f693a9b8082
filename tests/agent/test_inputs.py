"""agent/inputs.py: query parameters, parsed or answered 400 (no server: mocked requests)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from hasync.agent.inputs import query_float, query_int
from hasync.errors import BadRequest


def req(query: str) -> web.Request:
    return make_mocked_request("GET", f"/v1/changes?{query}")


def test_query_int_parses_defaults_and_bounds() -> None:
    assert query_int(req("since=42"), "since", 0) == 42
    assert query_int(req(""), "since", 7) == 7
    assert query_int(req("n=10"), "n", 0, lo=1, hi=10) == 10


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=abc", "query parameter since='abc' is not an integer"),
        ("since=" + "x" * 60, "query parameter since='" + "x" * 40 + "' is not an integer"),
        ("since=1.5", "query parameter since='1.5' is not an integer"),
        ("since=" + "9" * 20, "query parameter since=" + "9" * 20 + " is out of range [0, 9223372036854775808]"),
        ("since=-1", "query parameter since=-1 is out of range [0, 9223372036854775808]"),
    ],
)
def test_query_int_refuses(query: str, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        query_int(req(query), "since", 0)
    assert exc.value.message == message and exc.value.http_status == 400


def test_query_float_parses_and_defaults() -> None:
    assert query_float(req("wait=2.5"), "wait", 0.0) == 2.5
    assert query_float(req("wait=-3"), "wait", 0.0) == -3.0
    assert query_float(req("x=1"), "wait", 1.25) == 1.25


@pytest.mark.parametrize("raw", ["abc", "", "nan", "inf", "-inf", "1e999"])
def test_query_float_refuses_what_is_not_a_finite_number(raw: str) -> None:
    with pytest.raises(BadRequest, match=f"query parameter wait='{raw}' is not a finite number"):
        query_float(req(f"wait={raw}"), "wait", 0.0)
