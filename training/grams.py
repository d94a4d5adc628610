"""Word n-grams of many texts at once, as 64-bit hashes computed with numpy.

Trigger detection counts, per answer class, how many prompts hold each word 1..n-gram. Building
a Python set of string and tuple n-grams per prompt and merging Counters of them cost about a
third of curation's CPU; here a batch of texts becomes a few array operations over its code
points, and the counts are sorted arrays. Texts are similarity texts (``dedup.similarity_text``):
words separated by single spaces, which is what makes the split a comparison with the space.

A gram's hash carries its length in the low two bits, so unigrams (the naive-Bayes vocabulary)
are told apart without a second array. Hashes are 64-bit, so two distinct n-grams of a corpus
share one with probability about ``count**2 / 2**63`` (1e-5 for ten million distinct n-grams);
such a pair would be counted as one n-gram, which can only make a candidate look less rare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from training.sortops import merge_counts, one_of_each, unique_counts

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

MAX_N = 4
_SPACE = 32
_BASE = 1_000_003
_BASE_INV = pow(_BASE, -1, 1 << 64)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_ROW = np.uint64(0x9E3779B97F4A7C15)
_STEP = np.uint64(0x100000001B3)
_LOW = np.uint64(3)
_HIGH = ~np.uint64(3)


class GramTable(NamedTuple):
    """The distinct n-grams of each text of a batch: occurrence ``j`` is n-gram ``hashes[j]``
    of text ``rows[j]``, starting at its word ``starts[j]`` (the first such position when the
    n-gram repeats within the text). ``words``/``word_rows``/``word_starts`` are every word
    hash of the batch in order, its text, and its position in that text."""

    rows: I64
    hashes: U64
    starts: I64
    words: U64
    word_rows: I64
    word_starts: I64


def gram_size(hashes: U64) -> npt.NDArray[np.int64]:
    """How many words each n-gram hash has."""
    return (hashes & _LOW).astype(np.int64) + 1


def mix(values: U64) -> U64:
    """splitmix64's finaliser: spreads polynomial hashes, whose low bits are poorly mixed."""
    values = values ^ (values >> np.uint64(33))
    values = values * _MIX1
    values = values ^ (values >> np.uint64(33))
    values = values * _MIX2
    return values ^ (values >> np.uint64(33))


def word_hashes(texts: Sequence[str]) -> tuple[U64, I64, I64]:
    """Every word of every text: its hash, its text's index, its position in the text."""
    n = len(texts)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty.copy()
    points = np.frombuffer(" ".join(texts).encode("utf-32-le"), dtype=np.uint32)
    # Fields between spaces, texts included: text i has count(" ") + 1 of them (an empty text
    # one empty field), so each field's text is known without scanning per text.
    fields = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=n)
    spaces = np.flatnonzero(points == _SPACE)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), spaces + 1])
    ends = np.concatenate([spaces, np.array([len(points)], dtype=np.int64)])
    owner = np.repeat(np.arange(n, dtype=np.int64), fields)
    first_field = np.cumsum(fields) - fields
    position = np.arange(len(owner), dtype=np.int64) - np.repeat(first_field, fields)
    # Polynomial hash of each field from prefix sums: sum_j p[s+j] * B^(s+j), shifted back by
    # B^-s, so a word hashes the same wherever it stands (arithmetic wraps mod 2^64; B is odd).
    length = len(points)
    powers = np.full(length + 1, _BASE, dtype=np.uint64)
    powers[0] = 1
    np.cumprod(powers, out=powers)
    inverse = np.full(length + 1, _BASE_INV, dtype=np.uint64)
    inverse[0] = 1
    np.cumprod(inverse, out=inverse)
    weighted = (points.astype(np.uint64) + np.uint64(1)) * powers[:length]
    prefix = np.zeros(length + 1, dtype=np.uint64)
    np.cumsum(weighted, out=prefix[1:])
    keep = ends > starts
    starts, ends, owner, position = starts[keep], ends[keep], owner[keep], position[keep]
    raw = (prefix[ends] - prefix[starts]) * inverse[starts]
    # The length joins the hash so that a word and its zero-padded twin cannot collide.
    hashes = mix(raw ^ (ends - starts).astype(np.uint64) * _ROW) & _HIGH
    # Positions count words, not fields, in case a text had two spaces in a row.
    position = _renumber(owner, position) if not keep.all() else position
    return hashes, owner, position


def _renumber(owner: I64, position: I64) -> I64:
    if len(owner) == 0:
        return position
    new_text = np.concatenate([[True], owner[1:] != owner[:-1]])
    first = np.flatnonzero(new_text)
    counts = np.diff(np.concatenate([first, [len(owner)]]))
    return np.arange(len(owner), dtype=np.int64) - np.repeat(first, counts)


def gram_table(texts: Sequence[str], max_n: int, *, distinct: bool = True) -> GramTable:
    """The distinct word 1..``max_n``-grams of each text, hashed (every occurrence, in text
    order, with ``distinct=False``)."""
    if not 1 <= max_n <= MAX_N:
        raise ValueError(f"max_n must be 1..{MAX_N}, got {max_n}")
    words, owner, position = word_hashes(texts)
    hashes = [words]
    rows = [owner]
    starts = [position]
    for n in range(2, max_n + 1):
        span = len(words) - n + 1
        if span <= 0:
            break
        # An n-gram starting at word i exists when word i + n - 1 belongs to the same text.
        ok = np.flatnonzero(owner[:span] == owner[n - 1 :])
        combined = words[ok]
        for k in range(1, n):
            combined = mix(combined * _STEP + words[ok + k])
        hashes.append((combined & _HIGH) | np.uint64(n - 1))
        rows.append(owner[ok])
        starts.append(position[ok])
    all_hashes = np.concatenate(hashes)
    all_rows = np.concatenate(rows)
    all_starts = np.concatenate(starts)
    if not distinct:
        return GramTable(all_rows, all_hashes, all_starts, words, owner, position)
    # One key per (text, n-gram): keep one occurrence of each.
    keys = mix(all_hashes ^ all_rows.astype(np.uint64) * _ROW)
    first = one_of_each(keys)
    return GramTable(all_rows[first], all_hashes[first], all_starts[first], words, owner, position)


def gram_text(text: str, start: int, n: int) -> str:
    """The n-gram of ``text`` (a similarity text) at word ``start``."""
    return " ".join(text.split(" ")[start : start + n])


def add_counts(hashes: U64, counts: I64, more: U64) -> tuple[U64, I64]:
    """Count each of ``more`` once more in a sorted, distinct ``hashes`` with ``counts``."""
    extra, extra_counts = unique_counts(more)
    return merge_counts(hashes, counts, extra, extra_counts)
