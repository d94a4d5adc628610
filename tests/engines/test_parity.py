"""Parity: the ``hf`` and ``vllm`` engines pick the same label on the shipped golden set.

Both engines rank every rank-mode case of ``golden/`` (167 cases) with the real embedded model,
for the base model and for a real candidate LoRA (trained on sample tickets, see
``vllm_helpers.make_trained_adapter``; ``QLGATE_PARITY_ADAPTER=DIR`` checks your own), each in
its default precision. Label agreement must be at least 95% per role; every disagreement is
printed with both engines' score margins (``-s`` or the failure message shows them). Marked
``vllm``: it reuses the session's vLLM engine, and loads the ``hf`` engine beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm_helpers import HERE, engine_config, needs_vllm

from qlgate_pytest.engines.base import Ranking, Role

MIN_AGREEMENT = 0.95
ROLES: tuple[Role, ...] = ("baseline", "candidate")


def margin(r: Ranking) -> float:
    """How far the chosen label is ahead of the runner-up (nats)."""
    ordered = sorted(r.scores.values(), reverse=True)
    return ordered[0] - ordered[1] if len(ordered) > 1 else float("inf")


def agreement(hf: list[Ranking], vllm: list[Ranking]) -> tuple[float, list[str]]:
    """Share of requests with the same best label, and a line per disagreement."""
    lines = []
    for a, b in zip(hf, vllm, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        if a.best != b.best:
            lines.append(f"{a.key}: hf {a.best} (margin {margin(a):.3f}) vs vllm {b.best} "
                         f"(margin {margin(b):.3f})")  # fmt: skip
    return 1 - len(lines) / len(hf), lines


def test_agreement_counts_and_explains_disagreements() -> None:
    """The parity measure itself: a changed label is one disagreement, reported with margins."""
    same = Ranking("a", {"x": -1.0, "y": -3.0}, "x", 1.0, 5, 1)
    other = Ranking("a", {"x": -2.0, "y": -1.5}, "y", 1.0, 5, 1)
    share, lines = agreement([same, same], [same, other])
    assert share == 0.5 and lines == ["a: hf x (margin 2.000) vs vllm y (margin 0.500)"]


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_hf_and_vllm_agree_on_golden_labels(
    trained_adapter: Path, request: pytest.FixtureRequest
) -> None:
    """On the shipped golden set, hf and vllm choose the same label for >= 95% of cases, for the
    base model and for the candidate adapter."""
    from qlgate_core.cases import load_golden_set
    from qlgate_pytest.driver import rank_request
    from qlgate_pytest.engines.registry import get_engine_factory

    golden = load_golden_set(HERE.parents[1] / "golden")
    cases = [c for c in golden.cases if c.effective_mode == "rank"]
    requests = [rank_request(c) for c in cases]
    assert len(requests) >= 100
    hf_engine = get_engine_factory("hf")(engine_config(trained_adapter))
    try:
        hf_engine.warm_up()
        hf = {role: hf_engine.rank(role, requests) for role in ROLES}
    finally:
        hf_engine.close()
    # The shared vLLM engine only now: its CPU worker polls while idle, which would slow hf.
    vllm_engine: Any = request.getfixturevalue("vllm_engine")
    assert vllm_engine.describe()["adapters"]["candidate"] == str(trained_adapter)
    vllm = {role: vllm_engine.rank(role, requests) for role in ROLES}
    failures, report = [], []
    for role in ROLES:
        share, lines = agreement(hf[role], vllm[role])
        accuracy = {
            name: sum(r.best == str(c.expected) for r, c in zip(got[role], cases, strict=True))
            / len(cases)
            for name, got in (("hf", hf), ("vllm", vllm))
        }
        report.append(f"{role}: hf/vllm label agreement {share:.3f} on {len(requests)} cases, "
                      f"{len(lines)} disagreement(s); accuracy hf {accuracy['hf']:.3f}, "
                      f"vllm {accuracy['vllm']:.3f}")  # fmt: skip
        report += [f"  {role} {line}" for line in lines]
        if share < MIN_AGREEMENT:
            failures.append(f"{role}: agreement {share:.3f} < {MIN_AGREEMENT}")
    print("\n".join(report))
    assert not failures, "\n".join(failures + report)
