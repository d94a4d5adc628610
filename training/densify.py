"""Optimal densification of one-permutation MinHash signatures (``training.minhash``).

A bin no shingle fell into borrows the value of the first non-empty bin on its probe sequence:
bin ``j``'s ``t``-th probe is ``mix(j ^ salt(seed, t)) % num_perm``, the same for every text
(Shrivastava, "Optimal Densification for Fast and Accurate Minwise Hashing", 2017).

Probing one round at a time suits texts with many non-empty bins (most empty bins are filled by
their first probe or two), but a text with ``k`` non-empty bins needs ``num_perm / k`` probes per
empty bin on average: ~16k probes for a one-shingle text ("hi", "thanks") at 128 bins, which
made 4,096 such texts cost 1.5 s. So after a few rounds the bins still empty are settled from a
table instead: ``first[j, s]``, the first attempt whose probe of bin ``j`` is bin ``s``, the same
for every text, so a bin's source is its row's non-empty bin with the smallest entry. The table
is exact up to its horizon; a bin it cannot settle (none of its row's bins met by then) goes
back to probing from there.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from training.grams import I64, mix

U32 = npt.NDArray[np.uint32]

# The value of a bin no shingle reached (before densification), and of every bin of a text with
# no shingles at all.
EMPTY = np.uint32(0xFFFFFFFF)
_PROBE_SALT = 0xA0761D6478BD642F
_MASK64 = (1 << 64) - 1
# Rounds probed one at a time before the table takes over.
_ROUNDS = 8
# Attempts the table covers, per bin: 4 x num_perm attempts meet ~98% of the (bin, source)
# pairs (all of them take ~11 x num_perm, and the table's cost grows with num_perm squared: 5 ms
# at 128 bins, 1 s at 1,024, once per process); bins whose sources are all among the rest probe
# on.
_HORIZON_PER_BIN = 4
_NEVER = np.iinfo(np.int32).max
# Table entries gathered at once (bins still empty x num_perm).
_BLOCK = 1 << 20


def densify(sigs: U32, seed: int) -> U32:
    """``sigs`` with each empty bin of a text that has a non-empty one filled; texts with no
    shingles keep EMPTY everywhere."""
    n, num_perm = sigs.shape
    # Flat positions, so each probe is one gather.
    source = sigs.ravel()
    empty = np.flatnonzero(source == EMPTY)
    rows = empty // num_perm
    some = np.bincount(rows, minlength=n) < num_perm
    keep = some[rows]
    empty = empty[keep]
    cols = empty % num_perm
    result = sigs.copy()
    target = result.ravel()
    empty, cols = _probe(source, target, empty, cols, num_perm, seed, 1, _ROUNDS)
    if len(empty):
        empty, cols, horizon = _from_table(sigs, target, empty, cols, seed)
        _probe(source, target, empty, cols, num_perm, seed, horizon + 1, None)
    return result


def _probe(
    source: U32, target: U32, empty: I64, cols: I64, num_perm: int, seed: int, start: int,
    rounds: int | None,
) -> tuple[I64, I64]:  # fmt: skip
    """Probe attempts ``start``, ``start + 1``, ... (``rounds`` of them, or until every bin is
    filled); returns the bins still empty."""
    bins = np.arange(num_perm, dtype=np.uint64)
    first = empty - cols
    attempt = start
    while len(empty) and (rounds is None or attempt < start + rounds):
        probe = (mix(bins ^ _salt(seed, attempt)) % np.uint64(num_perm)).astype(np.int64)
        # Values are borrowed from the bins as hashed, never from bins filled in this pass.
        found = source[first + probe[cols]]
        hit = found != EMPTY
        target[empty[hit]] = found[hit]
        miss = ~hit
        empty, first, cols = empty[miss], first[miss], cols[miss]
        attempt += 1
    return empty, cols


def _from_table(sigs: U32, target: U32, empty: I64, cols: I64, seed: int) -> tuple[I64, I64, int]:
    """Fill the bins the table settles; returns the others and the table's horizon."""
    num_perm = sigs.shape[1]
    table, horizon = first_probes(num_perm, seed)
    filled = sigs != EMPTY
    left: list[I64] = []
    step = max(1, _BLOCK // num_perm)
    for at in range(0, len(empty), step):
        cells, bins = empty[at : at + step], cols[at : at + step]
        rows = cells // num_perm
        times = np.where(filled[rows], table[bins], _NEVER)
        best = times.argmin(axis=1)
        settled = times[np.arange(len(cells)), best] != _NEVER
        target[cells[settled]] = sigs[rows[settled], best[settled]]
        left.append(np.flatnonzero(~settled) + at)
    rest = np.concatenate(left) if left else np.zeros(0, dtype=np.int64)
    return empty[rest], cols[rest], horizon


@lru_cache(maxsize=8)
def first_probes(num_perm: int, seed: int) -> tuple[npt.NDArray[np.int32], int]:
    """``table[j, s]``: the first attempt (from 1) whose probe of bin ``j`` is bin ``s``, or
    ``_NEVER`` if none is within the horizon; and the horizon (attempts covered)."""
    table = np.full((num_perm, num_perm), _NEVER, dtype=np.int32)
    bins = np.arange(num_perm, dtype=np.uint64)
    horizon = _HORIZON_PER_BIN * num_perm
    block = 64
    for start in range(1, horizon + 1, block):
        attempts = range(start, min(start + block, horizon + 1))
        salts = np.array([_salt(seed, a) for a in attempts], dtype=np.uint64)
        probes = (mix(bins[None, :] ^ salts[:, None]) % np.uint64(num_perm)).astype(np.int64)
        times = np.repeat(np.array(attempts, dtype=np.int32), num_perm)
        np.minimum.at(table, (np.tile(np.arange(num_perm), len(attempts)), probes.ravel()), times)
        if (table != _NEVER).all():
            return table, start + len(attempts) - 1
    return table, horizon


def _salt(seed: int, attempt: int) -> np.uint64:
    return np.uint64(((seed + attempt) * _PROBE_SALT) & _MASK64)
