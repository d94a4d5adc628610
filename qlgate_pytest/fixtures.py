"""Fixtures for Python test files in ``golden/`` (and anywhere in a gate run).

- ``qlgate_engine`` (session): the gate's loaded engine, the same one that scores case files.
- ``qlgate_candidate`` (session): the adapter directory under test (trained first with
  ``--train-data``).
- ``qlgate_case``: parametrised over golden cases by the plugin; narrow it with
  ``@pytest.mark.qlgate_cases(tags=[...], ids=[...])``.
- ``qlgate_result``: the gate's :class:`~qlgate_pytest.gate.CaseResult` for ``qlgate_case``,
  from the batched run (no extra generation).

Without an active gate (no ``--candidate``/``--train-data``) these fixtures skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qlgate_core.errors import QlgateError
from qlgate_pytest.session import GATE_KEY, GateSession

INACTIVE = "qlgate gate inactive: pass --candidate=DIR or --train-data=DIR"


@pytest.fixture(scope="session")
def qlgate_session(request: pytest.FixtureRequest) -> GateSession:
    """The active gate session (skips the test when the gate is inactive)."""
    gate = request.config.stash.get(GATE_KEY, None)
    if gate is None:
        pytest.skip(INACTIVE)
    return gate


@pytest.fixture(scope="session")
def qlgate_engine(qlgate_session: GateSession) -> Any:
    """The session's engine, loaded on first use of this fixture (a fully cached gate run loads
    no model unless a test asks for it); a load failure fails the test with the message."""
    try:
        return qlgate_session.loaded_engine()
    except QlgateError as exc:
        pytest.fail(f"qlgate engine unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def qlgate_candidate(qlgate_session: GateSession) -> Path:
    """The adapter directory being gated."""
    return qlgate_session.candidate_dir()


@pytest.fixture
def qlgate_result(
    qlgate_session: GateSession, qlgate_case: Any, request: pytest.FixtureRequest
) -> Any:
    """The gate's outcome for ``qlgate_case`` (both roles), computed in the batched run."""
    return qlgate_session.outcome(qlgate_case, request.session.items)
