"""Statistics of the gate: macro-F1, accuracy, percentiles, paired bootstrap, McNemar."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlgate_core import stats

LABEL = st.sampled_from(["alpha", "beta", "gamma", "delta"])
PRED = st.one_of(st.none(), LABEL)
Row = tuple[str, str | None, str | None]  # expected, candidate, baseline
ROWS = st.lists(st.tuples(LABEL, PRED, PRED), min_size=1, max_size=40)


def _f1_reference(expected: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Textbook per-class F1 averaged over the union of expected and predicted labels."""
    classes = set(expected) | {p for p in predicted if p is not None}
    scores = []
    for k in classes:
        tp = sum(e == k and p == k for e, p in zip(expected, predicted, strict=True))
        fp = sum(e != k and p == k for e, p in zip(expected, predicted, strict=True))
        fn = sum(e == k and p != k for e, p in zip(expected, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_macro_f1_hand_computed() -> None:
    """A small confusion matrix gives the hand-computed macro-F1."""
    expected = ["a", "a", "b", "b", "c"]
    predicted: list[str | None] = ["a", "b", "b", None, "a"]
    # a: tp1 fp1 fn1 -> 0.5; b: tp1 fp1 fn1 -> 0.5; c: tp0 fn1 -> 0
    assert stats.macro_f1(expected, predicted) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_predicted_label_never_expected_counts_as_a_class() -> None:
    """A label only ever predicted joins the union with F1 = 0 (scikit-learn's convention)."""
    assert stats.macro_f1(["alpha"] * 2, ["alpha", "zeta"]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_none_prediction_is_a_miss_without_false_positive() -> None:
    """None is a false negative for the true class and adds no class of its own."""
    assert stats.macro_f1(["a", "b"], ["a", None]) == pytest.approx((1.0 + 0.0) / 2)


@settings(max_examples=100, deadline=None)
@given(ROWS)
def test_macro_f1_matches_reference_and_is_in_unit_interval(rows: list[Row]) -> None:
    """macro-F1 equals the textbook definition and lies in [0, 1]."""
    expected = [r[0] for r in rows]
    predicted = [r[1] for r in rows]
    value = stats.macro_f1(expected, predicted)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(_f1_reference(expected, predicted))


@settings(max_examples=100, deadline=None)
@given(ROWS)
def test_macro_f1_is_one_iff_all_correct(rows: list[Row]) -> None:
    """macro-F1 is exactly 1 when every prediction is right and below 1 otherwise."""
    expected = [r[0] for r in rows]
    predicted = [r[1] for r in rows]
    all_right = all(e == p for e, p in zip(expected, predicted, strict=True))
    assert (stats.macro_f1(expected, predicted) == 1.0) == all_right


@settings(max_examples=100, deadline=None)
@given(ROWS, st.randoms(use_true_random=False))
def test_metrics_are_permutation_invariant(rows: list[Row], rnd: object) -> None:
    """Shuffling the cases changes neither macro-F1 nor accuracy."""
    import random

    assert isinstance(rnd, random.Random)
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    for data in (rows, shuffled):
        assert stats.macro_f1([r[0] for r in data], [r[1] for r in data]) == pytest.approx(
            stats.macro_f1([r[0] for r in rows], [r[1] for r in rows])
        )
        assert stats.accuracy([r[0] == r[1] for r in data]) == pytest.approx(
            stats.accuracy([r[0] == r[1] for r in rows])
        )


@settings(max_examples=100, deadline=None)
@given(ROWS, st.lists(st.integers(1, 3), min_size=40, max_size=40))
def test_integer_weight_equals_repeating_the_case(rows: list[Row], reps: list[int]) -> None:
    """A case of weight k counts exactly like k copies of that case."""
    weights = reps[: len(rows)]
    repeated = [r for r, k in zip(rows, weights, strict=True) for _ in range(k)]
    assert stats.macro_f1(
        [r[0] for r in rows], [r[1] for r in rows], [float(w) for w in weights]
    ) == pytest.approx(stats.macro_f1([r[0] for r in repeated], [r[1] for r in repeated]))
    assert stats.accuracy(
        [r[0] == r[1] for r in rows], [float(w) for w in weights]
    ) == pytest.approx(stats.accuracy([r[0] == r[1] for r in repeated]))


def test_bad_weights_are_refused() -> None:
    """Weights must be positive, finite and one per case."""
    with pytest.raises(ValueError, match="weights"):
        stats.accuracy([True, False], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 cases"):
        stats.accuracy([True, False], [1.0])


def test_percentiles_are_nearest_rank() -> None:
    """p50/p95/p99 are observed values at rank ceil(q/100 * n), never interpolated."""
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50.0
    assert stats.percentile(values, 99) == 99.0
    assert stats.percentile([10.0, 20.0], 50) == 10.0
    assert stats.percentile([10.0, 20.0], 99) == 20.0
    assert stats.percentile([], 99) is None
    summary = stats.latency_summary([5.0, 1.0, 3.0])
    assert summary == {"p50": 3.0, "p95": 5.0, "p99": 5.0, "mean": 3.0}


def test_bootstrap_equals_naive_resampling() -> None:
    """Each bootstrap resample's delta equals macro-F1 recomputed on that resample by hand."""
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c"]
    n, resamples, seed = 25, 300, 11
    expected = [labels[i] for i in rng.integers(0, 3, n)]
    cand = [e if rng.random() < 0.8 else labels[rng.integers(0, 3)] for e in expected]
    base: list[str | None] = [e if rng.random() < 0.6 else None for e in expected]
    ci = stats.paired_bootstrap_macro_f1(expected, cand, base, resamples=resamples, seed=seed)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    deltas = [
        stats.macro_f1([expected[i] for i in row], [cand[i] for i in row])
        - stats.macro_f1([expected[i] for i in row], [base[i] for i in row])
        for row in idx
    ]
    low, high = np.quantile(deltas, [0.025, 0.975])
    assert (ci.ci_low, ci.ci_high) == pytest.approx((low, high))
    assert ci.delta == pytest.approx(
        stats.macro_f1(expected, cand) - stats.macro_f1(expected, base)
    )


@settings(max_examples=100, deadline=None)
@given(ROWS, st.integers(0, 3))
def test_bootstrap_ci_contains_the_point_estimate(rows: list[Row], seed: int) -> None:
    """The percentile interval contains the full-sample delta, for macro-F1 and accuracy."""
    e = [r[0] for r in rows]
    c = [r[1] for r in rows]
    b = [r[2] for r in rows]
    ci = stats.paired_bootstrap_macro_f1(e, c, b, resamples=300, seed=seed)
    assert ci.ci_low - 1e-12 <= ci.delta <= ci.ci_high + 1e-12
    acc = stats.paired_bootstrap_accuracy(
        [x == y for x, y in zip(e, c, strict=True)],
        [x == y for x, y in zip(e, b, strict=True)],
        resamples=300,
        seed=seed,
    )
    assert acc.ci_low - 1e-12 <= acc.delta <= acc.ci_high + 1e-12


def test_bootstrap_is_seeded_and_identical_roles_give_zero() -> None:
    """Same seed, same interval; a candidate identical to its baseline has CI [0, 0]."""
    e = ["a", "b", "c", "a"] * 10
    p: list[str | None] = ["a", "c", "c", None] * 10
    q: list[str | None] = ["a", "b", "a", "a"] * 10
    assert stats.paired_bootstrap_macro_f1(e, p, q, seed=3) == stats.paired_bootstrap_macro_f1(
        e, p, q, seed=3
    )
    same = stats.paired_bootstrap_macro_f1(e, p, p, resamples=1000)
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_narrows_with_confidence() -> None:
    """A lower confidence gives an interval nested inside the higher one."""
    e = ["a", "b"] * 50
    c = ["a", "b"] * 40 + ["b", "a"] * 10
    b = ["a", "b"] * 30 + ["b", "a"] * 20
    wide = stats.paired_bootstrap_macro_f1(e, c, b, confidence=0.99)
    narrow = stats.paired_bootstrap_macro_f1(e, c, b, confidence=0.80)
    assert wide.ci_low < narrow.ci_low < narrow.delta < narrow.ci_high < wide.ci_high


def test_bootstrap_refuses_bad_arguments() -> None:
    """No cases, no resamples or a confidence outside (0, 1) raise ValueError."""
    with pytest.raises(ValueError):
        stats.paired_bootstrap_macro_f1([], [], [])
    with pytest.raises(ValueError, match="resamples"):
        stats.paired_bootstrap_macro_f1(["a"], ["a"], ["a"], resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_bootstrap_accuracy([True], [True], confidence=1.0)


def test_mcnemar_exact_matches_the_binomial() -> None:
    """b and c count the discordant pairs; p is the two-sided exact binomial probability."""
    cand = [True] * 10 + [False] * 2 + [True] * 5
    base = [False] * 10 + [True] * 2 + [True] * 5
    test = stats.mcnemar_exact(cand, base)
    assert (test.b, test.c) == (10, 2)
    expected_p = 2 * sum(math.comb(12, k) for k in range(3)) / 2**12
    assert test.p_value == pytest.approx(expected_p)
    assert stats.mcnemar_exact([True, False], [True, False]).p_value == 1.0


@settings(max_examples=100, deadline=None)
@given(ROWS)
def test_macro_f1_over_expected_averages_only_the_expected_labels(rows: list[Row]) -> None:
    """over_expected: per-class F1 averaged over the expected labels alone (stray predictions
    are misses of the true label, not classes of their own); within [0, 1]."""
    expected = [e for e, _, _ in rows]
    predicted = [c for _, c, _ in rows]
    scores = []
    for k in sorted(set(expected)):
        tp = sum(e == k and p == k for e, p in zip(expected, predicted, strict=True))
        fp = sum(e != k and p == k for e, p in zip(expected, predicted, strict=True))
        fn = sum(e == k and p != k for e, p in zip(expected, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))
    value = stats.macro_f1(expected, predicted, over_expected=True)
    assert value == pytest.approx(sum(scores) / len(scores))
    assert 0.0 <= value <= 1.0


def test_clopper_pearson_is_the_beta_quantile_interval() -> None:
    """The exact interval: Beta(k, n-k+1) and Beta(k+1, n-k) quantiles at alpha/2, with the
    closed forms at 0 and n successes; (0, 1) for no trials; bad arguments refused."""
    from scipy.stats import beta

    low, high = stats.clopper_pearson(2, 12, 0.95)
    assert low == pytest.approx(beta.ppf(0.025, 2, 11))
    assert high == pytest.approx(beta.ppf(0.975, 3, 10))
    assert stats.clopper_pearson(0, 12, 0.95) == pytest.approx((0.0, 1 - 0.025 ** (1 / 12)))
    assert stats.clopper_pearson(12, 12, 0.9) == pytest.approx((0.05 ** (1 / 12), 1.0))
    assert stats.clopper_pearson(0, 0, 0.95) == (0.0, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        stats.clopper_pearson(1, 2, 1.0)
    with pytest.raises(ValueError, match="3 successes in 2 trials"):
        stats.clopper_pearson(3, 2, 0.95)
