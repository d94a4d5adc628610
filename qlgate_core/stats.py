"""Pure statistics for the gate: macro-F1, accuracy, percentiles, paired bootstrap, McNemar,
Clopper-Pearson.

Everything takes plain sequences and returns plain numbers, so it is unit- and property-tested
without pytest internals. Conventions, stated once:

- macro-F1 averages per-class F1 over the union of the expected labels and the labels actually
  predicted (a predicted label never expected scores F1 = 0 and pulls the mean down, as in
  scikit-learn). A prediction of None ("no label found") is a false negative for the true class
  and a false positive for no class.
- Case weights multiply every count; with all weights equal the result is the unweighted one.
- Latency percentiles are nearest-rank (numpy's ``inverted_cdf``): p99 is an observed latency,
  never an interpolation between two requests.
- The bootstrap CI is the percentile interval (linear interpolation between resample values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from collections.abc import Sequence

# Resamples per chunk: 1,000 x 2,000 cases of int64 indices is 16 MB, small enough for a laptop
# and large enough that numpy's per-call overhead does not matter.
_CHUNK = 1_000

FloatArray = NDArray[np.float64]


def _weights(n: int, weights: Sequence[float] | None) -> FloatArray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{w.shape[0] if w.ndim else 0} weights for {n} cases")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("weights must be finite and > 0")
    return w


def _encode(
    expected: Sequence[str], *predicted: Sequence[str | None]
) -> tuple[NDArray[np.int64], list[NDArray[np.int64]], int]:
    """Expected and predicted labels as class indices; None becomes -1."""
    classes = sorted(set(expected).union(p for pred in predicted for p in pred if p is not None))
    index = {c: i for i, c in enumerate(classes)}
    true = np.fromiter((index[e] for e in expected), dtype=np.int64, count=len(expected))
    preds = []
    for pred in predicted:
        if len(pred) != len(expected):
            raise ValueError(f"{len(pred)} predictions for {len(expected)} expected labels")
        preds.append(
            np.fromiter(
                (-1 if p is None else index[p] for p in pred), dtype=np.int64, count=len(pred)
            )
        )
    return true, preds, len(classes)


def _confusion_features(
    true: NDArray[np.int64], pred: NDArray[np.int64], k: int, w: FloatArray
) -> FloatArray:
    """Per-case contributions to (TP, FN, FP) for each class, shape (n, 3k): summing rows over
    any multiset of cases gives that multiset's confusion counts, which is what makes the
    bootstrap one matrix product per chunk."""
    n = true.shape[0]
    rows = np.arange(n)
    right = pred == true
    feats = np.zeros((n, 3 * k), dtype=np.float64)
    feats[rows[right], true[right]] = w[right]
    wrong = ~right
    feats[rows[wrong], k + true[wrong]] = w[wrong]
    predicted_wrong = wrong & (pred >= 0)
    feats[rows[predicted_wrong], 2 * k + pred[predicted_wrong]] = w[predicted_wrong]
    return feats


def _macro_from_counts(counts: FloatArray, k: int) -> FloatArray:
    """Macro-F1 per row of (TP, FN, FP) counts; classes absent from a row (all counts zero) are
    left out of that row's mean, as they are absent from its label union."""
    tp, fn, fp = counts[:, :k], counts[:, k : 2 * k], counts[:, 2 * k :]
    denom = 2 * tp + fn + fp
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    n_present = present.sum(axis=1)
    out: FloatArray = np.divide(
        f1.sum(axis=1), n_present, out=np.zeros(counts.shape[0]), where=n_present > 0
    )
    return out


def macro_f1(
    expected: Sequence[str],
    predicted: Sequence[str | None],
    weights: Sequence[float] | None = None,
    *,
    over_expected: bool = False,
) -> float:
    """Macro-averaged F1 of ``predicted`` against ``expected``; 0.0 for no cases.

    ``over_expected`` averages over the expected labels only (scikit-learn's ``labels=``): a
    slice of the golden set holds only some labels, and a label it never expects would enter
    the mean as F1 = 0 for every stray prediction, however good the slice's answers are. Stray
    predictions still count, as misses of the expected label."""
    if not expected:
        return 0.0
    true, (pred,), k = _encode(expected, predicted)
    feats = _confusion_features(true, pred, k, _weights(len(expected), weights))
    counts = feats.sum(axis=0, keepdims=True)
    if not over_expected:
        return float(_macro_from_counts(counts, k)[0])
    keep = np.unique(true)
    tp, fn, fp = (counts[0, i * k : (i + 1) * k][keep] for i in range(3))
    return float(np.mean(2 * tp / (2 * tp + fn + fp)))


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion at
    ``confidence``; (0, 1) for no trials. Its upper bound is what a "rate at most X" rule can
    claim from ``trials`` observations, as the bootstrap's lower bound is for a gain."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes in {trials} trials")
    if trials == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest  # scipy.stats costs ~0.3 s to import; only when needed

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def accuracy(correct: Sequence[bool], weights: Sequence[float] | None = None) -> float:
    """(Weighted) share of correct cases; 0.0 for no cases."""
    if not correct:
        return 0.0
    w = _weights(len(correct), weights)
    return float(np.dot(np.asarray(correct, dtype=np.float64), w) / w.sum())


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank ``q``-th percentile (0 < q <= 100), or None for no values."""
    if not values:
        return None
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="inverted_cdf"))


def latency_summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 (nearest-rank) and mean of latencies in ms; None values for no requests."""
    mean = float(np.mean(values)) if values else None
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": mean,
    }


@dataclass(frozen=True)
class BootstrapCI:
    """Paired bootstrap of candidate minus baseline: the full-sample delta and its interval."""

    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    seed: int


def _resample_counts(n: int, resamples: int, seed: int) -> list[FloatArray]:
    """Chunks of (B, n) matrices: how often each case appears in each resample."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
        chunks.append(np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64))
    return chunks


def _interval(
    point: float, deltas: FloatArray, confidence: float, resamples: int, seed: int
) -> BootstrapCI:
    alpha = 1.0 - confidence
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(point, float(low), float(high), confidence, resamples, seed)


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def paired_bootstrap_macro_f1(
    expected: Sequence[str],
    candidate: Sequence[str | None],
    baseline: Sequence[str | None],
    weights: Sequence[float] | None = None,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Candidate-minus-baseline macro-F1 with a percentile CI from resampling cases in pairs:
    each resample draws the same cases for both roles, so per-case difficulty cancels."""
    _check(resamples, confidence)
    if not expected:
        raise ValueError("the paired bootstrap needs at least one case")
    true, (cand, base), k = _encode(expected, candidate, baseline)
    w = _weights(len(expected), weights)
    feats = np.hstack(
        [_confusion_features(true, cand, k, w), _confusion_features(true, base, k, w)]
    )
    point_counts = feats.sum(axis=0, keepdims=True)
    point = float(
        _macro_from_counts(point_counts[:, : 3 * k], k)[0]
        - _macro_from_counts(point_counts[:, 3 * k :], k)[0]
    )
    deltas = []
    for counts in _resample_counts(len(expected), resamples, seed):
        m = counts @ feats
        deltas.append(_macro_from_counts(m[:, : 3 * k], k) - _macro_from_counts(m[:, 3 * k :], k))
    return _interval(point, np.concatenate(deltas), confidence, resamples, seed)


def paired_bootstrap_accuracy(
    candidate: Sequence[bool],
    baseline: Sequence[bool],
    weights: Sequence[float] | None = None,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Candidate-minus-baseline (weighted) accuracy with a paired percentile bootstrap CI."""
    _check(resamples, confidence)
    if not candidate or len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} candidate and {len(baseline)} baseline outcomes")
    w = _weights(len(candidate), weights)
    cc = np.asarray(candidate, dtype=np.float64)
    bc = np.asarray(baseline, dtype=np.float64)
    feats = np.stack([w * (cc - bc), w], axis=1)
    point = float(feats[:, 0].sum() / feats[:, 1].sum())
    deltas = []
    for counts in _resample_counts(len(candidate), resamples, seed):
        m = counts @ feats
        deltas.append(m[:, 0] / m[:, 1])
    return _interval(point, np.concatenate(deltas), confidence, resamples, seed)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on paired correctness: ``b`` cases only the candidate gets right,
    ``c`` only the baseline; ``p_value`` two-sided (1.0 when no case is discordant)."""

    b: int
    c: int
    p_value: float


def mcnemar_exact(candidate: Sequence[bool], baseline: Sequence[bool]) -> McNemar:
    """McNemar's exact (binomial) test on per-case correctness of two paired roles."""
    if len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} candidate and {len(baseline)} baseline outcomes")
    b = sum(1 for x, y in zip(candidate, baseline, strict=True) if x and not y)
    c = sum(1 for x, y in zip(candidate, baseline, strict=True) if y and not x)
    if b + c == 0:
        return McNemar(0, 0, 1.0)
    from scipy.stats import binomtest  # scipy.stats costs ~0.3 s to import; only when needed

    return McNemar(b, c, float(binomtest(b, b + c, 0.5).pvalue))
