"""The verdict: every rule of issue 5 item 5 and the canary of issue 6 item 2."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlgate_pytest.gate import (
    CaseResult,
    RoleResult,
    Selection,
    Thresholds,
    case_result_from_json,
    case_result_to_json,
    decide,
)

LABELS = ("account", "billing", "returns", "shipping")
FAST = Thresholds(resamples=2_000)


def role(pred: str | None, expected: str, latency: float = 10.0, **kw: object) -> RoleResult:
    return RoleResult(
        output=pred or "no idea",
        predicted=pred,
        correct=pred == expected,
        latency_ms=latency,
        output_tokens=1,
        **kw,  # type: ignore[arg-type]
    )


def cases(
    n: int, cand_acc: float, base_acc: float, seed: int = 0, tags: tuple[str, ...] = ("core",)
) -> list[CaseResult]:
    """n label cases; each role right with its probability, wrong as a random other label."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        e = LABELS[i % 4]

        def pick(acc: float, e: str = e) -> str:
            return e if rng.random() < acc else rng.choice([x for x in LABELS if x != e])

        out.append(
            CaseResult(
                f"c{i}",
                tags,
                False,
                1.0,
                "label",
                e,
                role(pick(cand_acc), e),
                role(pick(base_acc), e),
            )
        )
    return out


def whole(results: list[CaseResult]) -> Selection:
    return Selection(len(results), len(results))


def replace(c: CaseResult, **kw: object) -> CaseResult:
    import dataclasses

    return dataclasses.replace(c, **kw)  # type: ignore[arg-type]


def test_clearly_better_candidate_passes() -> None:
    """A candidate far better than the baseline on 200 cases passes with a positive CI."""
    results = cases(200, 0.9, 0.5)
    v = decide(results, FAST, whole(results))
    assert v.passed, v.reasons
    assert v.reasons == ()
    assert v.delta["ci_low"] > 0
    assert v.metrics["candidate"]["macro_f1"] > v.metrics["baseline"]["macro_f1"]
    assert v.delta["b"] > v.delta["c"]
    assert v.delta["mcnemar_p"] < 0.001


def test_identical_outcomes_are_red_with_gain_and_canary_reasons() -> None:
    """A zero-effect adapter (candidate == baseline) fails the gain rule and the canary."""
    base = cases(100, 0.7, 0.7)
    results = [replace(c, candidate=c.baseline) for c in base]
    v = decide(results, FAST, whole(results))
    assert not v.passed
    text = "\n".join(v.reasons)
    assert "gain 0.000 (95% CI 0.000..0.000) does not exceed the required 0.000" in text
    assert "adapter was not applied" in text


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(LABELS), st.sampled_from((*LABELS, None))),
        min_size=1,
        max_size=30,
    )
)
def test_decide_is_red_whenever_candidate_equals_baseline(
    rows: list[tuple[str, str | None]],
) -> None:
    """Whatever the outcomes, a candidate identical to its baseline never passes."""
    results = [
        CaseResult(f"c{i}", (), False, 1.0, "label", e, role(p, e), role(p, e))
        for i, (e, p) in enumerate(rows)
    ]
    assert not decide(results, Thresholds(resamples=200), whole(results)).passed


def test_noise_level_gain_is_red_by_default() -> None:
    """A tiny observed gain whose CI straddles zero is red, with the numbers in the reason."""
    results = cases(60, 0.72, 0.70, seed=3)
    v = decide(results, FAST, whole(results))
    assert not v.passed
    assert any("does not exceed the required 0.000" in r for r in v.reasons)


def test_negative_min_gain_is_a_non_inferiority_check() -> None:
    """With min_f1_gain = -0.2 an equally good (but different) candidate passes."""
    results = cases(300, 0.8, 0.8, seed=1)
    assert not decide(results, FAST, whole(results)).passed
    v = decide(results, Thresholds(min_f1_gain=-0.2, resamples=2_000), whole(results))
    assert v.passed, v.reasons


def test_canary_uses_label_scores_when_outputs_match() -> None:
    """Rank mode: equal argmax labels but different log-likelihoods mean the adapter acted."""
    results = []
    for i in range(40):
        e = LABELS[i % 4]
        base = role(e, e, label_scores={k: -1.0 - (k != e) for k in LABELS})
        cand = role(e, e, label_scores={k: -0.5 - (k != e) for k in LABELS})
        results.append(CaseResult(f"c{i}", (), False, 1.0, "label", e, cand, base))
    v = decide(results, FAST, whole(results))
    assert {c.name: c.passed for c in v.checks}["canary"] is True
    same = [replace(c, candidate=c.baseline) for c in results]
    v2 = decide(same, FAST, whole(same))
    assert {c.name: c.passed for c in v2.checks}["canary"] is False


def test_canary_tolerates_float_noise_but_not_real_change() -> None:
    """Log-likelihoods within 1e-4 count as equal; a 1e-2 move counts as a change."""
    e = "billing"
    base = role(e, e, label_scores=dict.fromkeys(LABELS, -1.0))
    for eps, applied in ((1e-7, False), (1e-2, True)):
        cand = role(e, e, label_scores={k: -1.0 + eps for k in LABELS})
        results = [CaseResult("c", (), False, 1.0, "label", e, cand, base)]
        v = decide(results, Thresholds(resamples=100), whole(results))
        assert {c.name: c.passed for c in v.checks}["canary"] is applied


def test_must_pass_miss_is_red_and_named() -> None:
    """A must_pass case the candidate misses fails the gate even when the gain is large."""
    results = cases(200, 0.9, 0.5)
    miss = next(c for c in results if c.candidate and not c.candidate.correct)
    results = [replace(c, must_pass=True) if c is miss else c for c in results]
    v = decide(results, FAST, whole(results))
    assert not v.passed
    assert any("must_pass" in r and miss.case_id in r for r in v.reasons)


def test_case_error_and_session_error_are_red() -> None:
    """Any case error, missing candidate outcome or session error turns the gate red."""
    good = cases(200, 0.9, 0.5)
    errored = [replace(good[0], error="engine timeout"), *good[1:]]
    assert "engine timeout" in " ".join(decide(errored, FAST, whole(errored)).reasons)
    missing = [replace(good[0], candidate=None), *good[1:]]
    assert not decide(missing, FAST, whole(missing)).passed
    session = decide(good, FAST, Selection(200, 200, errors=("preflight: NaN in adapter",)))
    assert not session.passed
    assert "NaN in adapter" in " ".join(session.reasons)
    fewer = decide(good, FAST, Selection(210, 210))
    assert any("only 200 of 210" in r for r in fewer.reasons)


def test_empty_results_are_red() -> None:
    """No cases at all can never pass."""
    v = decide([], FAST, Selection(0, 0))
    assert not v.passed
    assert "no cases" in v.reasons[0]


def test_partial_selection_is_red_unless_allowed() -> None:
    """A -k subset of the golden set is red by default and passes only when allowed."""
    results = cases(200, 0.9, 0.5)
    v = decide(results, FAST, Selection(200, 300))
    assert not v.passed
    assert v.metrics["partial"] is True
    assert any("200 of 300" in r for r in v.reasons)
    allowed = Thresholds(allow_partial=True, resamples=2_000)
    assert decide(results, allowed, Selection(200, 300)).passed


def test_p99_budget() -> None:
    """The candidate's p99 latency must stay within max_p99_ms when set."""
    results = cases(200, 0.9, 0.5)
    slow = [
        replace(c, candidate=replace_latency(c.candidate, 500.0 if i == 199 else 10.0))
        for i, c in enumerate(results)
    ]
    ok = decide(slow, Thresholds(max_p99_ms=20.0, resamples=2_000), whole(slow))
    assert ok.passed  # 1 slow request in 200 is above p99's rank
    slow2 = [
        replace(c, candidate=replace_latency(c.candidate, 500.0 if i < 3 else 10.0))
        for i, c in enumerate(results)
    ]
    red = decide(slow2, Thresholds(max_p99_ms=20.0, resamples=2_000), whole(slow2))
    assert not red.passed
    assert any("p99 latency 500.0 ms exceeds the budget 20.0 ms" in r for r in red.reasons)


def replace_latency(r: RoleResult | None, ms: float) -> RoleResult:
    import dataclasses

    assert r is not None
    return dataclasses.replace(r, latency_ms=ms)


def test_slice_drop_is_red_when_over_the_limit() -> None:
    """Better overall but worse on one slice: red when that drop exceeds max_slice_drop."""
    better = cases(300, 0.95, 0.5, seed=1, tags=("core",))
    worse = cases(60, 0.4, 0.9, seed=2, tags=("edge",))
    worse = [replace(c, case_id=f"e{i}") for i, c in enumerate(worse)]
    results = better + worse
    assert decide(results, FAST, whole(results)).passed
    v = decide(results, Thresholds(max_slice_drop=0.05, resamples=2_000), whole(results))
    assert not v.passed
    assert any("slice 'edge'" in r for r in v.reasons)
    assert not any("slice 'core'" in r for r in v.reasons)


def test_drift_mode_floor_without_baseline() -> None:
    """No baseline: the floor decides; without a floor the gate is red."""
    results = [replace(c, baseline=None) for c in cases(100, 0.9, 0.5)]
    v = decide(results, FAST, whole(results))
    assert not v.passed
    assert any("no baseline" in r for r in v.reasons)
    assert decide(results, Thresholds(min_f1=0.8, resamples=2_000), whole(results)).passed
    low = decide(results, Thresholds(min_f1=0.99, resamples=2_000), whole(results))
    assert any("is below the floor 0.990" in r for r in low.reasons)
    assert low.delta["ci_low"] is None


def test_some_missing_baselines_are_red() -> None:
    """A baseline outcome missing for some cases (e.g. an old report) is red, not ignored."""
    results = cases(200, 0.9, 0.5)
    results[5] = replace(results[5], baseline=None)
    v = decide(results, FAST, whole(results))
    assert any("1 case(s) have no baseline outcome: c5" in r for r in v.reasons)


def test_non_label_scorers_keep_macro_f1_primary_and_get_their_own_family() -> None:
    """Non-label cases beside label cases form the pass_rate family; macro-F1 stays primary."""
    results = cases(200, 0.9, 0.5)
    results = [replace(c, scorer="contains") if i % 2 else c for i, c in enumerate(results)]
    v = decide(results, FAST, whole(results))
    assert v.metrics["primary_metric"] == "macro_f1"
    assert v.metrics["families"] == {"label": 100, "pass_rate": 100}
    assert v.delta["primary"] == pytest.approx(v.delta["families"]["label"]["delta"])
    assert v.metrics["candidate"]["macro_f1"] is not None  # over the label cases only
    assert v.metrics["candidate"]["pass_rate"] is not None  # over the other cases only


def test_weights_change_the_metric_when_they_differ() -> None:
    """Unequal weights weight the primary metric and the unweighted value is kept beside it."""
    results = cases(100, 0.6, 0.6, seed=4)
    heavy = [replace(c, weight=5.0) if c.candidate and c.candidate.correct else c for c in results]
    m = decide(heavy, FAST, whole(heavy)).metrics["candidate"]
    assert m["accuracy"] > m["accuracy_unweighted"]
    assert "accuracy_unweighted" not in decide(results, FAST, whole(results)).metrics["candidate"]


def test_metrics_shape() -> None:
    """Metrics carry per-role quality, slices, latency percentiles and throughput."""
    results = cases(40, 0.9, 0.5, tags=("core", "edge"))
    v = decide(results, FAST, whole(results))
    cand = v.metrics["candidate"]
    assert set(cand["latency_ms"]) == {"p50", "p95", "p99", "mean"}
    assert set(cand["per_slice"]) == {"core", "edge"}
    assert cand["tokens_per_s"] == pytest.approx(100.0)
    assert cand["n_cases"] == 40
    assert v.thresholds["resamples"] == 2_000


ROLE = st.builds(
    RoleResult,
    output=st.text(max_size=20),
    predicted=st.one_of(st.none(), st.sampled_from(LABELS)),
    correct=st.booleans(),
    latency_ms=st.floats(0, 1e4),
    output_tokens=st.integers(0, 100),
    label_scores=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(LABELS), st.floats(-50, 0), max_size=4)
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        CaseResult,
        case_id=st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
        tags=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
        must_pass=st.booleans(),
        weight=st.floats(0.1, 10),
        scorer=st.sampled_from(["label", "regex"]),
        expected=st.text(max_size=20),
        candidate=st.one_of(st.none(), ROLE),
        baseline=st.one_of(st.none(), ROLE),
        error=st.one_of(st.none(), st.text(max_size=20)),
    )
)
def test_case_result_json_round_trip(case: CaseResult) -> None:
    """A CaseResult survives the JSON trip between xdist workers unchanged."""
    assert case_result_from_json(case_result_to_json(case)) == case


def test_case_result_from_bad_json_raises() -> None:
    """A malformed transport payload raises instead of yielding a half-filled result."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        case_result_from_json('{"case_id": "x"}')
