"""Is the label distribution of the prompts holding an n-gram skewed against the label prior?

Under the null hypothesis the labels of an n-gram's ``support`` holders are independent draws
from the prior (each class's share of all counted prompts). The statistic is the count ``hits``
of the majority label; its p-value is ``P(some class gets >= hits of support)``, bounded by the
sum over classes of the binomial tail ``P(Bin(support, prior_c) >= hits)`` (exact for the one
class that can hold a majority when the others' tails vanish, conservative otherwise; testing
only the majority label is a choice made after seeing the data, and the sum pays for it).

One such test runs per n-gram held by at least ``min_support`` prompts, so the p-values are
corrected with Benjamini-Hochberg over all of them; n-grams not worth testing further (an
impure majority) get p = 1, which keeps the procedure valid.

Pure numpy: the binomial tail is summed in log space (``binomial_tail``), tested against
``scipy.special.bdtrc``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# Terms of the binomial tails summed at a time.
_TERMS = 1 << 20


def binomial_tail(hits: I64, support: I64, prior: F64) -> F64:
    """``P(Bin(support, prior) >= hits)`` elementwise (arrays broadcast; 1 where hits <= 0),
    summed term by term in log space over ``hits..support``: the callers pass majorities
    (``hits > support / 2``), so a tail has at most half its support's terms. Equals
    ``scipy.special.bdtrc(hits - 1, support, prior)`` to ~1e-10 relative (tested); scipy's
    import (~0.15 s) would be a measurable share of curating a small corpus."""
    h, n, p = np.broadcast_arrays(np.asarray(hits), np.asarray(support), np.asarray(prior))
    shape = h.shape
    h, n = h.ravel().astype(np.int64), n.ravel().astype(np.int64)
    p = np.clip(p.ravel().astype(np.float64), 0.0, 1.0)
    out = np.ones(len(h), dtype=np.float64)
    todo = np.flatnonzero(h > 0)
    out[todo[h[todo] > n[todo]]] = 0.0
    todo = todo[h[todo] <= n[todo]]
    if len(todo) == 0:
        return out.reshape(shape)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(n.max()) + 1)))])
    first, last, chance = h[todo], n[todo], p[todo]
    # Chunks of whole tails bound the (terms) arrays.
    sizes = last - first + 1
    ends = np.cumsum(sizes)
    start = 0
    while start < len(todo):
        stop = max(
            int(np.searchsorted(ends, ends[start] - sizes[start] + _TERMS, "right")), start + 1
        )
        part = slice(start, stop)
        count = sizes[part]
        owner = np.repeat(np.arange(stop - start), count)
        offsets = np.cumsum(count) - count
        j = first[part][owner] + np.arange(int(count.sum())) - np.repeat(offsets, count)
        k, q = last[part][owner], chance[part][owner]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q, log_r = np.log(q), np.log1p(-q)
            terms = log_factorial[k] - log_factorial[j] - log_factorial[k - j]
            # 0 * log(0) is 0: a certain outcome's own term.
            terms += np.where(j > 0, j * log_q, 0.0) + np.where(k > j, (k - j) * log_r, 0.0)
        bounds = np.concatenate([[0], np.cumsum(count)[:-1]])
        peak = np.maximum.reduceat(terms, bounds)
        finite = np.isfinite(peak)
        shifted = np.exp(terms - np.where(finite, peak, 0.0)[owner])
        sums = np.add.reduceat(shifted, bounds)
        with np.errstate(divide="ignore"):
            tail = np.where(finite, np.exp(peak + np.log(sums)), 0.0)
        out[todo[part]] = np.minimum(tail, 1.0)
        start = stop
    return out.reshape(shape)


def skew_pvalues(hits: I64, support: I64, own: I64, priors: F64, ceiling: float) -> F64:
    """The skew p-value of each n-gram whose majority class ``own`` holds ``hits`` of its
    ``support`` prompts: the own class's tail, plus the other classes' tails (the union
    bound) wherever the own tail alone is at most ``ceiling``. Above it the value stays the
    own tail: a step-up procedure at level ``ceiling`` can never reject such a hypothesis,
    whatever its exact value above the level, so the rest need not be computed."""
    p = binomial_tail(hits, support, priors[own])
    low = np.flatnonzero(p <= ceiling)
    if len(low) and len(priors) > 1:
        # Chunks bound the (n-grams x classes) table.
        step = max(1, (1 << 20) // len(priors))
        for first in range(0, len(low), step):
            at = low[first : first + step]
            table = binomial_tail(hits[at, None], support[at, None], priors[None, :])
            p[at] = np.minimum(table.sum(axis=1), 1.0)
    return p


def benjamini_hochberg(p: F64, tests: int) -> F64:
    """BH-adjusted p-values (q-values) of ``p`` when ``tests`` hypotheses were tested in all,
    the ones not listed having p = 1: reject those with q <= the FDR level. Equals
    ``scipy.stats.false_discovery_control(p, method="bh")`` when ``tests == len(p)``."""
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if tests < n:
        raise ValueError(f"{n} p-values but only {tests} tests")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * tests / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(n, dtype=np.float64)
    q[order] = np.minimum(adjusted, 1.0)
    return q


def g_statistic(hits: I64, support: I64, prior: F64) -> F64:
    """The log-likelihood ratio of the majority label's share against its prior share (the
    binomial G-statistic / 2), in nats: a ranking of skews that does not underflow where
    p-values do."""
    h = hits.astype(np.float64)
    s = support.astype(np.float64)
    share = h / s
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(h > 0, h * np.log(share / prior), 0.0)
        rest = np.where(s > h, (s - h) * np.log((1 - share) / (1 - prior)), 0.0)
    out: F64 = first + rest
    return out
