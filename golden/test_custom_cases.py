"""Example: Python tests beside the case files, parametrised over golden cases.

A team adds checks that a case file cannot express by writing a test like these. They run in a
gate run only (``pytest --candidate=DIR``; without it they skip) and share the gate's engine:

- ``qlgate_case``: one golden case per test (narrow with ``@pytest.mark.qlgate_cases``);
- ``qlgate_result``: the gate's outcome for that case from the batched run (no new generation);
- ``qlgate_engine``: the session's loaded engine, for extra requests.

A failure here turns the gate red like any other failing test.
"""

from __future__ import annotations

from typing import Any

import pytest

from qlgate_pytest.driver import rank_request

# Label log-likelihoods move by ~1e-5 between batch layouts in float32; 1e-3 is a clear margin.
SCORE_TOLERANCE = 1e-3


@pytest.mark.qlgate_cases(tags=["critical"])
def test_critical_answer_is_the_same_when_asked_alone(
    qlgate_case: Any, qlgate_result: Any, qlgate_engine: Any
) -> None:
    """A critical ticket asked alone gets the label (and scores) the batched gate run scored."""
    if qlgate_case.effective_mode != "rank":
        pytest.skip("ranking check; this case generates")
    assert qlgate_result.error is None, qlgate_result.error
    scored = qlgate_result.candidate
    alone = qlgate_engine.rank("candidate", [rank_request(qlgate_case)])[0]
    assert alone.error is None, alone.error
    assert scored.label_scores is not None
    for label, value in alone.scores.items():
        assert value == pytest.approx(scored.label_scores[label], abs=SCORE_TOLERANCE), label
    assert alone.best == scored.predicted
