"""Hashed word n-grams: one hash per distinct n-gram string, per text, with its text recoverable."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.grams import gram_size, gram_table, gram_text, word_hashes

WORDS = st.sampled_from(["a", "b", "ab", "ba", "aa", "\u00e9t\u00e9", "x1", "1x", "kettle"])
TEXTS = st.lists(st.lists(WORDS, min_size=0, max_size=7).map(" ".join), min_size=1, max_size=6)


def reference(text: str, max_n: int) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + n]) for n in range(1, max_n + 1)
            for i in range(len(words) - n + 1)}  # fmt: skip


@given(TEXTS, st.integers(min_value=1, max_value=4))
def test_gram_table_holds_each_distinct_gram_once_per_text(texts: list[str], max_n: int) -> None:
    """Per text, the table has exactly its distinct n-grams; equal strings hash equally across
    texts and positions, different strings differently; each occurrence's text is recoverable."""
    table = gram_table(texts, max_n)
    by_string: dict[str, int] = {}
    for row, text in enumerate(texts):
        mine = np.flatnonzero(table.rows == row)
        strings = []
        for j in mine.tolist():
            size = int(gram_size(table.hashes[j : j + 1])[0])
            string = gram_text(text, int(table.starts[j]), size)
            strings.append(string)
            assert by_string.setdefault(string, int(table.hashes[j])) == int(table.hashes[j])
        assert sorted(strings) == sorted(reference(text, max_n))
    assert len(set(by_string.values())) == len(by_string)


def test_word_hashes_know_their_text_and_position() -> None:
    hashes, rows, positions = word_hashes(["b a", "", "a"])
    assert rows.tolist() == [0, 0, 2]
    assert positions.tolist() == [0, 1, 0]
    assert hashes[1] == hashes[2] != hashes[0]


def test_gram_order_matters_and_sizes_are_tagged() -> None:
    table = gram_table(["a b", "b a"], 2)
    pairs = {int(h) for h, n in zip(table.hashes, gram_size(table.hashes), strict=True) if n == 2}
    assert len(pairs) == 2
    assert sorted(gram_size(table.hashes).tolist()) == [1, 1, 1, 1, 2, 2]


def test_max_n_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_n"):
        gram_table(["a"], 5)
