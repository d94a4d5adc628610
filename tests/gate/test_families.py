"""Metrics by case family and slice shape (issue 20 item 7): label cases keep macro-F1, the other
scorers get a pass rate, each family has its own interval and check, and each slice is judged
by a metric that means something for its shape."""

from __future__ import annotations

import dataclasses
import random

import pytest

from qlgate_pytest.gate import CaseResult, RoleResult, Selection, Thresholds, decide
from qlgate_pytest.gate_metrics import slice_shape
from qlgate_pytest.report import build_report, render_summary

LABELS = ("account", "billing", "returns", "shipping")
FAST = Thresholds(resamples=2_000)


def label_role(pred: str | None, expected: str) -> RoleResult:
    return RoleResult(pred or "?", pred, pred == expected, 10.0, 1)


def text_role(ok: bool) -> RoleResult:
    return RoleResult("yes" if ok else "no", None, ok, 10.0, 4)


def label_cases(n: int, cand: float, base: float, seed: int = 0) -> list[CaseResult]:
    """n label cases over four labels; each role right with its probability."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        e = LABELS[i % 4]

        def pick(acc: float, e: str = e) -> str:
            return e if rng.random() < acc else rng.choice([x for x in LABELS if x != e])

        out.append(
            CaseResult(
                f"l{i}", ("core",), False, 1.0, "label", e, label_role(pick(cand), e),
                label_role(pick(base), e),
            )
        )  # fmt: skip
    return out


def text_cases(pairs: list[tuple[bool, bool]], scorer: str = "contains") -> list[CaseResult]:
    """Non-label cases from (candidate passes, baseline passes) pairs."""
    return [
        CaseResult(f"g{i}", ("gen",), False, 1.0, scorer, "yes", text_role(c), text_role(b))
        for i, (c, b) in enumerate(pairs)
    ]


def whole(results: list[CaseResult]) -> Selection:
    return Selection(len(results), len(results))


def checks(v: object) -> dict[str, bool | None]:
    return {c.name: c.passed for c in v.checks}  # type: ignore[attr-defined]


def test_one_non_label_case_does_not_switch_the_primary_metric() -> None:
    """A single generate case no longer turns macro-F1 into accuracy for the whole set (the old
    rule did): label cases keep macro-F1 with their own interval, the case gets a pass rate."""
    results = label_cases(200, 0.9, 0.5) + text_cases([(True, True)])
    v = decide(results, FAST, whole(results))
    assert v.passed, v.reasons
    assert v.metrics["primary_metric"] == "macro_f1"
    assert v.delta["primary_metric"] == "macro_f1"
    fams = v.delta["families"]
    assert set(fams) == {"label", "pass_rate"}
    assert fams["label"]["metric"] == "macro_f1" and fams["label"]["n"] == 200
    assert v.delta["ci_low"] == fams["label"]["ci_low"] > 0
    assert fams["pass_rate"] == {
        "metric": "pass_rate", "n": 1, "candidate": 1.0, "baseline": 1.0, "delta": 0.0,
        "ci_low": 0.0, "ci_high": 0.0,
    }  # fmt: skip
    detail = {c.name: c.detail for c in v.checks}
    assert detail["gain"].startswith("macro-F1 gain")
    assert "pass rate of the 1 non-label case(s) changed +0.000" in detail["pass_rate"]


def test_a_regressing_pass_rate_family_is_red_even_with_a_large_f1_gain() -> None:
    """Label cases far better, generation cases clearly worse: the pass_rate family's own check
    is red (its CI lower bound is below -max_pass_rate_drop), and the reason says so."""
    results = label_cases(200, 0.9, 0.5) + text_cases([(False, True)] * 12 + [(True, True)] * 28)
    v = decide(results, FAST, whole(results))
    assert not v.passed
    assert checks(v)["gain"] is True and checks(v)["pass_rate"] is False
    (reason,) = v.reasons
    assert reason.startswith("pass rate of the 40 non-label case(s) changed -0.300")
    assert "not within the allowed drop 0.050" in reason


def test_an_equal_pass_rate_family_is_non_inferior() -> None:
    """Generation cases the candidate answers as well as the baseline do not block the gate,
    though a handful of cases can never show a gain; margin 0 demands a shown gain."""
    results = label_cases(200, 0.9, 0.5) + text_cases([(True, True)] * 8 + [(False, False)] * 2)
    assert decide(results, FAST, whole(results)).passed
    strict = Thresholds(resamples=2_000, max_pass_rate_drop=0.0)
    v = decide(results, strict, whole(results))
    assert checks(v)["pass_rate"] is False
    assert "not within the allowed drop 0.000" in v.reasons[0]


def test_a_set_without_label_cases_gates_the_pass_rate_gain() -> None:
    """Only non-label cases: the pass rate is primary and must be shown better (min_f1_gain)."""
    better = text_cases([(True, False)] * 30 + [(True, True)] * 30, scorer="regex")
    v = decide(better, FAST, whole(better))
    assert v.passed, v.reasons
    assert v.metrics["primary_metric"] == "pass_rate"
    assert set(v.delta["families"]) == {"pass_rate"}
    assert "pass_rate" not in checks(v)  # the primary family's check is "gain"
    same = text_cases([(True, True)] * 30 + [(False, True)] * 2 + [(True, False)] * 2)
    v = decide(same, FAST, whole(same))
    assert any(r.startswith("pass rate gain 0.000") for r in v.reasons)


def test_floor_applies_to_every_family() -> None:
    """Drift mode (no baseline): --min-f1 is a floor on macro-F1 and on the pass rate alike."""
    results = label_cases(100, 0.9, 0.5) + text_cases([(True, True)] * 5 + [(False, True)] * 5)
    results = [dataclasses.replace(c, baseline=None) for c in results]
    v = decide(results, Thresholds(min_f1=0.8, resamples=200), whole(results))
    assert checks(v)["floor"] is True and checks(v)["floor_pass_rate"] is False
    assert v.reasons == ("candidate pass rate 0.500 is below the floor 0.800",)


def _sentiment(expected: str, cand: list[str], base: list[str], tag: str) -> list[CaseResult]:
    return [
        CaseResult(
            f"{tag}{i}", (tag,), False, 1.0, "label", expected, label_role(c, expected),
            label_role(b, expected),
        )
        for i, (c, b) in enumerate(zip(cand, base, strict=True))
    ]  # fmt: skip


def test_single_label_slice_is_judged_by_recall_not_macro_f1() -> None:
    """The held-out sentiment case: on the one-label 'positive' slice the candidate is right
    62/76 (baseline 60/76), but spreads its misses over two other labels, so slice macro-F1
    reads 0.300 against 0.441. The slice check compares recall and is not red."""
    cand = ["positive"] * 62 + ["negative"] * 7 + ["neutral"] * 7
    base = ["positive"] * 60 + ["negative"] * 16
    positive = _sentiment("positive", cand, base, "pos")
    # Other slices where the candidate is clearly better, so only the slice rule is at stake.
    negative = _sentiment("negative", ["negative"] * 70, ["neutral"] * 30 + ["negative"] * 40, "n")
    neutral = _sentiment("neutral", ["neutral"] * 70, ["negative"] * 30 + ["neutral"] * 40, "u")
    results = positive + negative + neutral
    v = decide(results, Thresholds(max_slice_drop=0.05, resamples=2_000), whole(results))
    assert v.passed, v.reasons
    assert checks(v)["slices"] is True
    cand_slice = v.metrics["candidate"]["per_slice"]["pos"]
    base_slice = v.metrics["baseline"]["per_slice"]["pos"]
    assert cand_slice["metric"] == "recall" and cand_slice["label"] == "positive"
    assert cand_slice["value"] == pytest.approx(62 / 76)
    assert base_slice["value"] == pytest.approx(60 / 76)
    lines = "\n".join(render_summary(build_report(v, results, {"golden_sha256": "x"})))
    assert "slice pos recall of 'positive' (n=76)" in lines


def test_single_label_slice_drop_in_recall_is_red_and_named() -> None:
    """A real recall drop on a one-label slice is still red, the reason naming the metric."""
    cand = ["positive"] * 50 + ["negative"] * 26
    base = ["positive"] * 70 + ["negative"] * 6
    results = _sentiment("positive", cand, base, "pos") + label_cases(300, 0.95, 0.3)
    v = decide(results, Thresholds(max_slice_drop=0.05, resamples=2_000), whole(results))
    assert checks(v)["slices"] is False
    text = "slice 'pos' recall of 'positive' dropped 0.263 (0.921 -> 0.658)"
    assert any(text in r for r in v.reasons)


def test_slice_shapes() -> None:
    """Shape decides the metric: 2+ labels macro-F1, one label recall, non-label pass rate,
    a mix of both the share of cases right."""
    two = _sentiment("a", ["a"], ["a"], "s") + _sentiment("b", ["b"], ["b"], "t")
    assert slice_shape(two) == ("macro_f1", None)
    assert slice_shape(two[:1]) == ("recall", "a")
    assert slice_shape(text_cases([(True, True)])) == ("pass_rate", None)
    assert slice_shape(two + text_cases([(True, True)])) == ("accuracy", None)


def test_multi_label_slice_macro_f1_averages_over_its_expected_labels() -> None:
    """A slice expecting two labels: a stray third label the candidate predicts counts as a
    miss, not as a third class with F1 = 0 that halves the slice's score."""
    slice_cases = _sentiment("a", ["a", "a", "c"], ["a", "a", "a"], "x") + _sentiment(
        "b", ["b", "b", "b"], ["b", "b", "b"], "y"
    )
    slice_cases = [dataclasses.replace(c, tags=("mixed",)) for c in slice_cases]
    v = decide(slice_cases, Thresholds(resamples=100), whole(slice_cases))
    mf1 = v.metrics["candidate"]["per_slice"]["mixed"]["macro_f1"]
    assert mf1 == pytest.approx((0.8 + 1.0) / 2)  # a: 2TP 1FN -> 0.8; b: 1.0; c left out


def test_summary_shows_one_row_per_family_with_its_interval_and_check() -> None:
    """The terminal table has a macro-F1 row and a pass-rate row, each with CI and result."""
    results = label_cases(200, 0.9, 0.5) + text_cases([(False, True)] * 12 + [(True, True)] * 28)
    v = decide(results, FAST, whole(results))
    lines = render_summary(build_report(v, results, {"golden_sha256": "x"}))
    f1_row = next(line for line in lines if line.startswith("macro-F1 (label, n=200)"))
    rate_row = next(line for line in lines if line.startswith("pass rate (non-label, n=40)"))
    assert f1_row.rstrip().endswith("PASS") and "gain > 0.000" in f1_row
    assert rate_row.rstrip().endswith("FAIL") and "drop < 0.050" in rate_row
    assert "-0.300" in rate_row
