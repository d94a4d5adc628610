"""The hf engine's batch planning and small helpers: pure functions, no model."""

from __future__ import annotations

import pytest

from qlgate_pytest.engines.hf_batching import (
    best_index,
    common_prefix_len,
    cut,
    left_pad,
    plan_batches,
    shared_prefix_len,
)


def test_common_prefix() -> None:
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5, 1], [1, 5]]) == 0
    assert common_prefix_len([]) == 0


def test_shared_prefix_leaves_every_row_a_token_and_skips_short_ones() -> None:
    head = list(range(20))
    assert shared_prefix_len([[*head, 1], [*head, 2, 3]]) == 20
    # a row equal to the prefix keeps its last token to itself
    assert shared_prefix_len([head, [*head, 7]]) == 19
    assert shared_prefix_len([[*head[:10], 1], [*head[:10], 2]]) == 0  # below the minimum
    assert shared_prefix_len([[*head, 1]]) == 0  # one row: nothing to share
    assert shared_prefix_len([[*head, 1], [*head, 2]], minimum=25) == 0


def test_batches_respect_the_budget_sort_by_width_and_keep_groups_apart() -> None:
    widths = [10, 50, 12, 11, 49, 5]
    batches = plan_batches(widths, max_tokens=40, min_rows=1)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) * max(widths[i] for i in batch) <= 40 or len(batch) == 1
    assert batches[0] == [5, 0, 3]  # widths 5, 10, 11: 3 x 11 = 33 <= 40
    grouped = plan_batches([5, 5, 5, 5], max_tokens=100, min_rows=1, groups=["a", "b", "a", "b"])
    assert grouped == [[0, 2], [1, 3]]


def test_min_rows_overrides_a_tiny_budget_and_ties_are_deterministic() -> None:
    assert plan_batches([100] * 5, max_tokens=1, min_rows=2) == [[0, 1], [2, 3], [4]]
    ties = plan_batches([3, 3, 3], max_tokens=100, min_rows=1, tie_break=["c", "a", "b"])
    assert ties == [[1, 2, 0]]


def test_left_pad_aligns_row_ends() -> None:
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids == [[1, 2, 3], [0, 0, 4]]
    assert mask == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize(
    ("row", "budget", "expected"),
    [([5, 6, 2, 7], 10, [5, 6, 2]), ([5, 6, 7], 2, [5, 6]), ([5, 0, 0], 3, [5])],
)
def test_cut_stops_at_end_padding_or_budget(
    row: list[int], budget: int, expected: list[int]
) -> None:
    assert cut(row, budget, pad_id=0, eos_ids=frozenset({2})) == expected


def test_best_index_prefers_the_first_of_equals() -> None:
    assert best_index([1.0, 3.0, 3.0]) == 1
    assert best_index([-2.0]) == 0
