"""Sort-based set operations agree with numpy's own."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.sortops import (
    merge_counts,
    one_of_each,
    repeated,
    unique,
    unique_counts,
    unique_inverse,
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
