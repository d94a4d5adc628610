"""Leakage: golden prompts that near-duplicate the training data an adapter was trained on.

A golden case the model saw in training measures memory, not skill. Similarity is curation's
(``training.dedup``: character shingles of ``similarity_text``, Jaccard), so the leakage filter
at curation time and this check at gate time agree on what a near-duplicate is. MinHash bands
pick candidate pairs (recall >= 0.99 at the threshold, by ``choose_bands``); each candidate is
verified by exact Jaccard, so a reported match never rests on an estimate. Finding and verifying
the training rows is ``training_data.py``'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_THRESHOLD = 0.85


@dataclass(frozen=True)
class Match:
    """Golden prompt ``query`` near-duplicates training text ``match`` (indexes into the inputs)."""

    query: int
    match: int
    similarity: float


def near_duplicates(
    queries: Sequence[str], corpus: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD
) -> list[Match]:
    """For each query, its most similar corpus text if their shingle Jaccard >= ``threshold``.

    Quadratic work is avoided: only texts sharing a MinHash band are compared."""
    import numpy as np

    from training import dedup

    if not 0 < threshold <= 1:
        raise ValueError(f"leakage threshold must be in (0, 1], got {threshold}")
    config = dedup.NearDupConfig(threshold=threshold)
    bands = dedup.choose_bands(config.num_perm, threshold)
    rows = config.num_perm // bands
    # Odd multipliers make each band's slots one uint64 key; a collision only adds a candidate,
    # which exact Jaccard then rejects.
    weights = np.random.default_rng(0).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    shingles: list[tuple[Any, Any]] = []
    band_keys: list[Any] = []
    for texts in (queries, corpus):
        if not texts:
            return []
        prepared = [dedup.similarity_text(t) for t in texts]
        hashes, offsets = dedup.shingle_hashes(prepared, config.shingle)
        shingles.append((hashes, offsets.astype(np.int64)))
        sigs = dedup.signatures(hashes, offsets, config).astype(np.uint64)
        band_keys.append((sigs.reshape(len(texts), bands, rows) * weights).sum(axis=2))
    sizes = [np.diff(offsets) for _, offsets in shingles]
    candidates: dict[int, set[int]] = {}
    # A blank text resembles nothing (the Jaccard of two empty sets would be 1).
    corpus_rows = np.flatnonzero(sizes[1] > 0)
    for b in range(bands):
        order = corpus_rows[np.argsort(band_keys[1][corpus_rows, b], kind="stable")]
        ordered = band_keys[1][order, b]
        start = np.searchsorted(ordered, band_keys[0][:, b], side="left")
        stop = np.searchsorted(ordered, band_keys[0][:, b], side="right")
        for q in np.flatnonzero((stop > start) & (sizes[0] > 0)).tolist():
            candidates.setdefault(q, set()).update(order[start[q] : stop[q]].tolist())
    found = []
    for q, ks in sorted(candidates.items()):
        mine = _set(shingles[0], q)
        best = max((dedup.jaccard(mine, _set(shingles[1], k)), k) for k in ks)
        if best[0] >= threshold:
            found.append(Match(q, best[1], best[0]))
    return found


def _set(flat: tuple[Any, Any], i: int) -> frozenset[int]:
    """Row ``i``'s shingle hashes as a set, built only for the rows that are compared."""
    hashes, offsets = flat
    return frozenset(hashes[offsets[i] : offsets[i + 1]].tolist())
