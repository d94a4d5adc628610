"""Sort-based set operations agree with numpy's own."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.sortops import (
    hash_argsort,
    merge_counts,
    one_of_each,
    repeated,
    unique,
    unique_counts,
    unique_inverse,
    unique_rows,
)

ARRAYS = hnp.arrays(
    np.uint64, st.integers(0, 60), elements=st.integers(0, 20) | st.integers(0, 2**64 - 1)
)


@given(ARRAYS)
def test_unique_family_matches_numpy(values: np.ndarray) -> None:
    expected, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    assert np.array_equal(unique(values), expected)
    got, got_counts = unique_counts(values)
    assert np.array_equal(got, expected) and np.array_equal(got_counts, counts)
    got, got_inverse = unique_inverse(values)
    assert np.array_equal(got, expected) and np.array_equal(got_inverse, inverse.ravel())
    picked = one_of_each(values)
    assert np.array_equal(values[picked], expected)
    assert np.array_equal(repeated(values), counts[inverse.ravel()] > 1)


@given(ARRAYS, st.data())
def test_unique_rows_is_unique_per_row(values: np.ndarray, data: st.DataObject) -> None:
    """Rows cut anywhere (empty ones included) come back as each row's own ``np.unique``."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=6)))
    offsets = np.array([0, *cuts, len(values)], dtype=np.uint64)
    distinct, bounds = unique_rows(values, offsets)
    assert len(bounds) == len(offsets) and bounds[0] == 0 and bounds[-1] == len(distinct)
    for k in range(len(offsets) - 1):
        row = values[int(offsets[k]) : int(offsets[k + 1])]
        assert np.array_equal(distinct[bounds[k] : bounds[k + 1]], np.unique(row))


@given(ARRAYS)
def test_hash_argsort_is_the_stable_argsort(values: np.ndarray) -> None:
    """Small values (which collide once their low bits are cleared) and hashes alike."""
    assert np.array_equal(hash_argsort(values), np.argsort(values, kind="stable"))


@given(st.integers(2, 3000), st.integers(0, 2**32), st.data())
def test_hash_argsort_of_hashes_and_near_twins(n: int, seed: int, data: st.DataObject) -> None:
    """Spread keys take the packed sort; keys that differ only in their low bits (the case its
    check exists for) and exact repeats must still come back in the stable order."""
    keys = np.random.default_rng(seed).integers(0, 2**64, n, dtype=np.uint64)
    twins = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=5))
    for a, b in twins:
        keys[b] = keys[a] ^ np.uint64(data.draw(st.integers(0, 3)))
    assert np.array_equal(hash_argsort(keys), np.argsort(keys, kind="stable"))


def test_unique_flattens_like_numpy() -> None:
    pairs = np.array([[3, 1], [1, 2]], dtype=np.int64)
    assert unique(pairs).tolist() == [1, 2, 3]


@given(ARRAYS, ARRAYS)
def test_merge_counts_adds_like_counting_both(a: np.ndarray, b: np.ndarray) -> None:
    va, ca = unique_counts(a)
    vb, cb = unique_counts(b)
    merged, counts = merge_counts(va, ca, vb, cb)
    expected, expected_counts = np.unique(np.concatenate([a, b]), return_counts=True)
    assert np.array_equal(merged, expected) and np.array_equal(counts, expected_counts)
