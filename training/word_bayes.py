"""Multinomial naive Bayes over prompt words, scored for many records at once.

The trigger check (``training.triggers``) asks, for each holder of a candidate n-gram: once the
n-gram's words are taken out, how confidently does the rest of the text belong to another
answer than the record's own? The model is the per-class word document frequencies the trigger
counts already hold (short prompts rarely repeat a word), with add-one smoothing, and a record
is scored leave-one-out: its own words are taken out of its own class first.

Counts live in a compressed-row (word x class) table; the holders' tokens are looked up as rows
of it, so scoring is a few array operations per batch of records instead of a Python loop per
word and class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from training.grams import I64, U64, gram_size
from training.sortops import unique

F64 = npt.NDArray[np.float64]


class WordBayes:
    """The model, from per-class ``(sorted n-gram hashes, prompt counts)`` (its unigrams are
    the words) and per-class prompt counts."""

    def __init__(self, per_class: Sequence[tuple[U64, I64]], docs: Sequence[int]) -> None:
        words = [(h[gram_size(h) == 1], c[gram_size(h) == 1]) for h, c in per_class]
        parts = [h for h, _ in words]
        self.vocabulary: U64 = unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        classes = len(per_class)
        rows = np.concatenate([np.searchsorted(self.vocabulary, h) for h, _ in words] or [[]])
        rows = rows.astype(np.int64)
        columns = np.repeat(np.arange(classes), [len(h) for h, _ in words]).astype(np.int64)
        counts = np.concatenate([c for _, c in words] or [[]]).astype(np.float64)
        # A compressed-row (word x class) table, by hand: scipy.sparse would do the same, but
        # its import (~0.1 s with scipy's) is a measurable share of curating a small corpus.
        order = np.lexsort((columns, rows))
        self._columns, self._counts = columns[order], counts[order]
        self._starts = np.searchsorted(rows[order], np.arange(len(self.vocabulary) + 1))
        self._size = len(self.vocabulary) + 1
        self.classes = classes
        self._docs = np.asarray(docs, dtype=np.float64)
        self._totals = np.bincount(columns, weights=counts, minlength=classes).astype(np.float64)
        self._word_docs = np.bincount(rows, weights=counts, minlength=len(self.vocabulary)).astype(
            np.float64
        )
        with np.errstate(divide="ignore"):
            self._log_docs = np.log(self._docs)

    def rows(self, words: U64) -> I64:
        """The vocabulary row of each word hash; -1 for a word the model never counted."""
        at = np.minimum(np.searchsorted(self.vocabulary, words), max(len(self.vocabulary) - 1, 0))
        found = self.vocabulary[at] == words if len(self.vocabulary) else np.zeros(0, bool)
        return np.where(found, at, -1).astype(np.int64)

    def _dense(self, rows: I64) -> F64:
        """The (rows x classes) table of prompt counts of the given vocabulary rows."""
        starts, ends = self._starts[rows], self._starts[rows + 1]
        sizes = ends - starts
        offsets = np.cumsum(sizes) - sizes
        at = np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(starts - offsets, sizes)
        out = np.zeros((len(rows), self.classes), dtype=np.float64)
        out[np.repeat(np.arange(len(rows)), sizes), self._columns[at]] = self._counts[at]
        return out

    def documents(self, rows: I64) -> F64:
        """How many prompts (all classes) hold each word, by vocabulary row."""
        out: F64 = self._word_docs[rows]
        return out

    def margins(self, rows: I64, slot: I64, own_class: I64, removed: Removed) -> Margins:
        """For each scored record (a slot), the score of its own class ``own_class[k]`` minus
        that of the best other class, in nats (negative: another class wins), and that best
        other class; and the largest of the record's margins with any one of its words left out
        (or none): negative when no single word decides that another class wins. ``rows``
        are the vocabulary rows of the distinct words scored, ``slot`` (ascending) the record
        each belongs to. ``removed`` says what to take out of each record's own class first
        (its own counts for a leave-one-out score; all holders of the n-gram under test for
        the flip test)."""
        n = len(own_class)
        if self.classes < 2:
            zeros = np.zeros(n, dtype=np.float64)
            return Margins(zeros, np.zeros(n, dtype=np.int64), zeros)
        counts = self._dense(rows)
        own_counts = counts[np.arange(len(rows)), own_class[slot]]
        own = np.maximum(own_counts - removed.word_counts, 0.0)
        # A word nobody else holds says nothing about the answer, but would still score, by
        # smoothing alone, for the classes with the fewest words; only words seen outside
        # what was removed are scored (a flip needs evidence for the other answer).
        informative = ((own > 0) | (counts.sum(axis=1) - own_counts > 0)).astype(np.float64)
        with np.errstate(divide="ignore"):
            log_total = np.log(np.maximum(self._docs.sum() - removed.docs, 1.0))
            norm = np.log(self._totals + self._size)
            own_docs = np.maximum(self._docs[own_class] - removed.docs, 0.0)
            own_norm = np.log(np.maximum(self._totals[own_class] - removed.words, 0.0) + self._size)
        # Each word's log-likelihood term per class (0 for uninformative words), and that of
        # its record's own class after the removal.
        terms = (np.log1p(counts) - norm[None, :]) * informative[:, None]
        own_terms = (np.log1p(own) - own_norm[slot]) * informative
        bounds = np.searchsorted(slot, np.arange(n + 1))
        everyone = np.arange(n)
        with np.errstate(divide="ignore"):
            scores = self._log_docs[None, :] - log_total[:, None] + _segment_sums(terms, bounds)
            mine = np.log(own_docs) - log_total + _segment_sums(own_terms[:, None], bounds)[:, 0]
        scores[everyone, own_class] = -np.inf
        best_class = scores.argmax(axis=1)
        margin: F64 = mine - scores[everyone, best_class]
        robust = margin.copy()
        if len(rows):
            # Leaving word t out of its record: every class's score loses t's term. Words are
            # scored in blocks of rows so that the (words x classes) table is built once.
            without = scores[slot] - terms
            without[np.arange(len(rows)), own_class[slot]] = -np.inf
            margin_without = (mine[slot] - own_terms) - without.max(axis=1)
            # The largest margin over each record's words (records without words keep theirs).
            order = np.lexsort((-margin_without, slot))
            present = bounds[:-1] < bounds[1:]
            firsts = order[bounds[:-1][present]]
            robust[present] = np.maximum(robust[present], margin_without[firsts])
        return Margins(margin, best_class.astype(np.int64), robust)


class Margins(NamedTuple):
    """Per scored record: own-class score minus the best other class's (nats), that class,
    and the largest such margin with any one word of the record left out."""

    margin: F64
    best: I64
    one_word_out: F64


class Removed(NamedTuple):
    """What leaves a scored record's own class before scoring: per scored word, a count of
    prompts holding it; per record, a number of prompts and of (distinct) words."""

    word_counts: F64
    docs: F64
    words: F64


def _segment_sums(values: F64, bounds: I64) -> F64:
    """Row sums of ``values`` over each range ``bounds[i]:bounds[i+1]`` (empty ranges give 0)."""
    cumulative = np.zeros((len(values) + 1, values.shape[1]), dtype=np.float64)
    np.cumsum(values, axis=0, out=cumulative[1:])
    out: F64 = cumulative[bounds[1:]] - cumulative[bounds[:-1]]
    return out
