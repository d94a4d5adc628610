"""MinHash signatures by one-permutation hashing with optimal densification, in numpy.

Each shingle hash is used once: its top bits pick one of ``num_perm`` bins and its low 32 bits
are its value there; a bin keeps its smallest value (Li, Owen and Zhang, "One Permutation
Hashing", 2012). A bin no shingle fell into borrows the value of another bin, found by probing
bins in an order that depends only on the bin number and the seed, so equal sets still get equal
signatures and ``P(sig_a[j] == sig_b[j])`` stays the Jaccard similarity (``training.densify``).

Quality: the estimate's spread is that of k independent permutations, sd sqrt(J(1-J)/k)
(0.030 at J = 0.85, k = 128; ``tests/training/test_minhash.py``), which is what
``dedup.choose_bands`` assumes: at the default threshold 0.85 a pair becomes an LSH candidate
99.4% of the time, as the formula says (measured over 3,000 pairs of 150 shingles; texts of 60
shingles, where most bins borrow, 98.7%).

Why not k permutations: they cost ``shingles x num_perm`` hash evaluations per text. rensa (used
until stop 12) does those in Rust in ~2.5 us a text here, but returns the signatures as Python
lists, and turning those into an array cost ~19 us a text; this costs ~9 us in all.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from training.densify import EMPTY as EMPTY
from training.densify import densify
from training.grams import mix

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]

_LOW32 = np.uint64(0xFFFFFFFF)
_SEED_SALT = 0xD6E8FEB86659FD93
_MASK64 = (1 << 64) - 1
# Rows per pass: bounds the temporaries (a few 8-byte arrays per shingle).
_ROWS_PER_PASS = 4096


def oph_signatures(hashes: U64, offsets: U64, num_perm: int, seed: int) -> U32:
    """One signature row of ``num_perm`` uint32 per text; text ``i``'s shingle hashes are
    ``hashes[offsets[i]:offsets[i+1]]`` (repeats allowed)."""
    n = len(offsets) - 1
    if n <= 0:
        return np.full((0, num_perm), EMPTY, dtype=np.uint32)
    bounds = np.asarray(offsets, dtype=np.int64)
    parts = []
    for start in range(0, n, _ROWS_PER_PASS):
        stop = min(start + _ROWS_PER_PASS, n)
        piece = hashes[bounds[start] : bounds[stop]]
        parts.append(_binned(piece, bounds[start : stop + 1] - bounds[start], num_perm, seed))
    sigs = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return densify(sigs, seed)


def _binned(hashes: U64, offsets: npt.NDArray[np.int64], num_perm: int, seed: int) -> U32:
    """Per text and bin, the smallest value of the shingles in that bin (``EMPTY`` if none)."""
    n = len(offsets) - 1
    sigs = np.full(n * num_perm, EMPTY, dtype=np.uint32)
    if len(hashes) == 0:
        return sigs.reshape(n, num_perm)
    spread = mix(hashes ^ np.uint64((seed * _SEED_SALT) & _MASK64))
    owner = np.repeat(np.arange(n, dtype=np.intp), np.diff(offsets))
    # Multiply-shift maps the top 32 bits onto 0..num_perm-1 without a modulo's bias.
    bins = ((spread >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
    # EMPTY marks an empty bin, so a value is at most EMPTY - 1.
    values = np.minimum(spread & _LOW32, np.uint64(EMPTY) - np.uint64(1)).astype(np.uint32)
    # An unbuffered in-place minimum per (text, bin) slot; a sort of packed slots and values
    # costs twice as much here.
    np.minimum.at(sigs, owner * num_perm + bins.astype(np.intp), values)
    return sigs.reshape(n, num_perm)
