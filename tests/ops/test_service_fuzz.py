"""Fuzz the gate service from its own OpenAPI schema (schemathesis) over real HTTP.

Generated requests, valid and invalid, must never produce a server error, and every answer must
match what the schema promises (status codes, content types, bodies).

schemathesis' lazy pytest integration (``from_fixture``) reads ``node._nodeid``, which pytest 9
no longer has, so each operation's strategy drives a plain Hypothesis test here instead.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES = 40


@pytest.fixture
def api_schema(service: str, auth: dict[str, str]) -> Any:
    """The live service's schema, fetched over HTTP with the token as any client would."""
    return schemathesis.openapi.from_url(f"{service}/openapi.json", headers=auth)


def _operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def test_schema_has_every_route(api_schema: Any) -> None:
    """The fuzzed schema covers the service's routes, so the fuzz test below misses none."""
    names = {f"{op.method.upper()} {op.path}" for op in _operations(api_schema)}
    assert {"POST /evaluate", "GET /jobs/{job_id}", "GET /healthz", "GET /metrics"} <= names


@pytest.mark.parametrize("route", ["POST /evaluate", "GET /jobs/{job_id}", "GET /healthz",
                                   "GET /metrics"])  # fmt: skip
def test_api_conforms_to_its_schema(api_schema: Any, auth: dict[str, str], route: str) -> None:
    """No generated request makes the service fail or answer outside its schema."""
    operation = next(
        op for op in _operations(api_schema) if f"{op.method.upper()} {op.path}" == route
    )

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=auth)

    check()
