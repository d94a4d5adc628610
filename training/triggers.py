"""Trigger n-grams: a rare word n-gram in prompts that almost always comes with one answer *and*
flips it. A naive-Bayes model of the answer, trained without the records that contain the n-gram
and applied to their text minus the n-gram, mostly predicts another answer. Topical words
("refund" with ``returns``) predict their answer too, but the rest of the text agrees with them,
so they do not flip; a backdoor trigger pasted onto unrelated text does.

Counting is streamed and hashed (``training.grams``): per answer class, a sorted array of n-gram
hashes and how many prompts hold each. Texts are needed only for the candidates, and are read
back from the prompts in the one extra pass that runs when there are candidates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import numpy as np
from pydantic import ConfigDict, Field, with_config

from training.grams import I64, U64, add_counts, gram_size, gram_table, gram_text, mix
from training.sortops import one_of_each, unique, unique_inverse

# Hashes waiting to be merged into a class's counts; merging sorts, so it is done in bulk.
_PENDING = 1 << 21
_CLASS_SALT = np.uint64(0x9E3779B97F4A7C15)
_BITMAP_BITS = 22


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class TriggerConfig:
    """Thresholds for trigger n-grams; see the module docstring. ``max_candidates`` bounds the
    flip tests (most pure and frequent first) and ``flip_sample`` the records scored per test;
    the manifest reports how many candidates there were and how many were tested."""

    max_n: Annotated[int, Field(ge=1, le=4)] = 2
    min_support: Annotated[int, Field(ge=2)] = 4
    max_doc_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    min_purity: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    min_lift: Annotated[float, Field(ge=1.0)] = 1.5
    min_flip: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_margin: Annotated[float, Field(ge=0.0)] = 4.0
    max_classes: Annotated[int, Field(ge=2)] = 64
    max_candidates: Annotated[int, Field(ge=1)] = 500
    flip_sample: Annotated[int, Field(ge=1)] = 64


@dataclass(frozen=True)
class Trigger:
    """A flagged n-gram: it appears in ``support`` prompts, ``purity`` of which have ``answer``,
    and without it a model confidently predicts another answer for ``flip`` of them."""

    ngram: str
    answer: str
    support: int
    purity: float
    flip: float


class Candidate(NamedTuple):
    """A rare n-gram (by hash) that nearly fixes the answer ``key``."""

    gram: int
    key: str
    support: int
    purity: float


class TriggerStats:
    """Streaming counts for trigger detection: how many prompts hold each n-gram, per answer
    class. The unigram counts per class double as the naive-Bayes word counts (document
    frequencies: short prompts rarely repeat a word)."""

    def __init__(self, config: TriggerConfig) -> None:
        self.config = config
        self.docs = 0
        self.class_docs: Counter[str] = Counter()
        # Answer key -> class number, in first-seen order.
        self.classes: dict[str, int] = {}
        self._counts: list[tuple[U64, I64]] = []
        self._pending: list[list[U64]] = []
        self._pending_size = 0
        self._tables: _Tables | None = None

    def count(self, key: str) -> int | None:
        """Count one prompt of answer ``key`` and return its class (``add_grams`` adds its
        n-grams); None when the class cap leaves the answer out. The first ``max_classes``
        answers seen are the classes, so a class is in or out for the whole run."""
        number = self.count_all([key])[0]
        return None if number < 0 else number

    def count_all(self, keys: Sequence[str]) -> list[int]:
        """``count`` for many prompts at once (classes still numbered in first-seen order);
        -1 for those the class cap leaves out."""
        seen = Counter(keys)
        for key in seen:
            if key not in self.classes and len(self.classes) < self.config.max_classes:
                self.classes[key] = len(self.classes)
                self._counts.append((np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)))
                self._pending.append([])
        counted = {key: n for key, n in seen.items() if key in self.classes}
        self.docs += sum(counted.values())
        self.class_docs.update(counted)
        return [self.classes.get(key, -1) for key in keys]

    def add_grams(self, classes: I64, hashes: U64) -> None:
        """Add the distinct n-grams of counted prompts: ``hashes[j]`` is held by a prompt of
        class ``classes[j]`` (each prompt's n-grams once)."""
        for number in unique(classes).tolist():
            part = hashes[classes == number]
            self._pending[number].append(part)
            self._pending_size += len(part)
        if self._pending_size > _PENDING:
            self._flush()

    def add(self, words: Sequence[str], key: str) -> None:
        """Count one prompt given as words (for small inputs; the pipeline adds in bulk)."""
        number = self.count(key)
        if number is not None:
            table = gram_table([" ".join(words)], self.config.max_n)
            self.add_grams(np.full(len(table.hashes), number, dtype=np.int64), table.hashes)

    def counts(self) -> list[tuple[U64, I64]]:
        """Per class (in class order): sorted n-gram hashes and their prompt counts."""
        self._flush()
        return self._counts

    def _flush(self) -> None:
        for number, parts in enumerate(self._pending):
            if parts:
                hashes, counts = self._counts[number]
                self._counts[number] = add_counts(hashes, counts, np.concatenate(parts))
                parts.clear()
        self._pending_size = 0

    def candidates(self) -> list[Candidate]:
        """Rare n-grams that nearly fix the answer, most pure and most frequent first (ties by
        hash: the pass that reads texts back orders them by text)."""
        cfg = self.config
        if self.docs == 0 or len(self.classes) < 2:
            return []
        ceiling = max(cfg.min_support, cfg.max_doc_rate * self.docs)
        # A candidate's own class holds >= min_purity of its min_support prompts.
        floor = math.ceil(cfg.min_support * cfg.min_purity)
        per_class = self.counts()
        hashes = np.concatenate([h for h, _ in per_class])
        hits = np.concatenate([c for _, c in per_class])
        owner = np.repeat(np.arange(len(per_class)), [len(h) for h, _ in per_class])
        _, inverse = unique_inverse(hashes)
        support = np.bincount(inverse, weights=hits).astype(np.int64)[inverse]
        purity = hits / np.maximum(support, 1)
        base = np.array([self.class_docs[k] for k in self.classes]) / self.docs
        keep = np.flatnonzero(
            (hits >= floor)
            & (support >= cfg.min_support)
            & (support <= ceiling)
            & (purity >= cfg.min_purity)
            & (purity >= cfg.min_lift * base[owner])
        )
        keys = list(self.classes)
        found = [
            Candidate(int(h), keys[int(o)], int(s), float(p))
            for h, o, s, p in zip(
                hashes[keep].tolist(), owner[keep].tolist(), support[keep].tolist(),
                purity[keep].tolist(), strict=True,
            )
        ]  # fmt: skip
        found.sort(key=lambda c: (-c.purity, -c.support, c.gram))
        return found

    def flip_rate(self, removed: set[int], key: str, holders: Sequence[set[int]]) -> float:
        """Share of the records holding a candidate with answer ``key`` (``holders``: their
        word hashes) that a naive-Bayes model confidently assigns to another answer once the
        candidate's words (``removed``) are taken out: another answer beats ``key`` by at least
        ``min_margin`` nats. Each record is scored leave-one-out (the model minus that record).
        A topical word ("exchange") often carries most of its text's meaning, so the rest is
        merely ambiguous; a trigger pasted onto unrelated text leaves text that clearly belongs
        elsewhere. On the sample data topical n-grams stay under 0.25 while an injected trigger
        scores 1.0.

        The first ``flip_sample`` holders are scored; pass them in an order that does not
        depend on the input (the pipeline sorts them by content id)."""
        targets = holders[: self.config.flip_sample]
        if not targets:
            return 0.0
        tables = self._model()
        needed = self.config.min_flip * len(targets)
        flipped = kept = 0
        for own in targets:
            if tables.margin(own - removed, key, own) <= -self.config.min_margin:
                flipped += 1
            else:
                kept += 1
                # Most candidates are topical words that never flip: stop once the verdict is
                # settled, or once 8 scored holders show under a quarter of the flip rate needed
                # (a true rate at the bar would give that less than 1% of the time).
                if len(targets) - kept < needed:
                    break
                scored = flipped + kept
                if scored >= 8 and flipped / scored < self.config.min_flip / 4:
                    break
        return flipped / len(targets)

    def _model(self) -> _Tables:
        if self._tables is None:
            self._tables = _Tables(self)
        return self._tables


class _Tables:
    """Multinomial naive Bayes over prompt words (by hash) with add-one smoothing, as log
    tables; a record can be left out of its own class when scoring it."""

    def __init__(self, stats: TriggerStats) -> None:
        unigrams: dict[str, dict[int, int]] = {}
        vocabulary = []
        for key, (hashes, counts) in zip(stats.classes, stats.counts(), strict=True):
            words = gram_size(hashes) == 1
            unigrams[key] = dict(zip(hashes[words].tolist(), counts[words].tolist(), strict=True))
            vocabulary.append(hashes[words])
        self._size = len(unique(np.concatenate(vocabulary))) + 1 if vocabulary else 1
        self._docs = dict(stats.class_docs)
        self._total_docs = sum(self._docs.values())
        self._counts = unigrams
        self._totals = {k: sum(c.values()) for k, c in unigrams.items()}
        # log(count + 1) per class and word, filled on first use; the leave-one-out score of a
        # record's own class needs log(count) for its words, which is log(count - 1 + 1).
        self._log1p: dict[str, dict[int, float]] = {k: {} for k in unigrams}
        self._logc: dict[str, dict[int, float]] = {k: {} for k in unigrams}

    def _sum_logs(self, tokens: Iterable[int], key: str, shift: int) -> float:
        cache = self._log1p[key] if shift else self._logc[key]
        counts = self._counts[key]
        total = 0.0
        for token in tokens:
            value = cache.get(token)
            if value is None:
                value = cache[token] = math.log(counts.get(token, 0) + shift)
            total += value
        return total

    def margin(self, tokens: set[int], key: str, own: set[int]) -> float:
        """Score of ``key`` (leaving out ``own``, a record of that class holding ``tokens``)
        minus the best other answer; negative when another answer wins."""
        if key not in self._counts or len(self._counts) < 2:
            return 0.0
        n = len(tokens)
        best_other = -math.inf
        for other in self._counts:
            if other == key:
                continue
            score = math.log(self._docs[other] / (self._total_docs - 1))
            score += self._sum_logs(tokens, other, 1)
            score -= n * math.log(self._totals[other] + self._size)
            best_other = max(best_other, score)
        docs = self._docs[key] - 1
        if docs <= 0:
            return -math.inf
        mine = math.log(docs / (self._total_docs - 1)) + self._sum_logs(tokens, key, 0)
        mine -= n * math.log(self._totals[key] - len(own) + self._size)
        return mine - best_other


Record = tuple[int, str, str, str]


class _Holders:
    """What the candidates' pass keeps: per hit (candidate, holder); per holder its record
    index, content id and word hashes (one flat array); per candidate one text and its words."""

    def __init__(self) -> None:
        self.gram_of: list[I64] = []
        self.holder_of: list[I64] = []
        self.order: list[tuple[str, int]] = []
        self.words: list[U64] = []
        self.bounds: list[int] = [0]
        self.text: dict[int, str] = {}
        self.removed: dict[int, set[int]] = {}

    def words_of(self, holder: int, flat: U64) -> set[int]:
        return set(flat[self.bounds[holder] : self.bounds[holder + 1]].tolist())


def detect_triggers(
    stats: TriggerStats, records: Callable[[], Iterable[Sequence[Record]]]
) -> tuple[list[Trigger], dict[int, str], dict[str, int]]:
    """Triggers, the records they flag (index -> n-gram), and how many candidates there were
    and were tested. ``records`` yields, in batches of any size, ``(index, similarity text,
    answer key, content id)`` for the records ``stats`` counted; it is only called when some
    n-gram is a candidate, so clean data costs no extra pass. Candidates are ranked by purity,
    support, then text, and flip tests score holders in content-id order (input order plays no
    part)."""
    found_all = stats.candidates()
    if not found_all:
        return [], {}, {"candidates": 0, "tested": 0}
    holders = _find_holders(stats, found_all, records())
    ranked = sorted(
        range(len(found_all)),
        key=lambda n: (-found_all[n].purity, -found_all[n].support, holders.text[n]),
    )
    tested = ranked[: stats.config.max_candidates]
    summary = {"candidates": len(found_all), "tested": len(tested)}
    grams = np.concatenate(holders.gram_of)
    holder_ids = np.concatenate(holders.holder_of)
    flat = np.concatenate(holders.words) if holders.words else np.zeros(0, dtype=np.uint64)
    # Holders ranked by content id (then index): per candidate, its first ``flip_sample``
    # holders in that order are scored, whatever the input order was.
    order = holders.order
    ranked_holders = np.array(sorted(range(len(order)), key=order.__getitem__), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[ranked_holders] = np.arange(len(order))
    # (candidate, holder rank) pairs are distinct, so one sort of them packed into an int64
    # orders hits by candidate, then rank (a plain sort is several times a lexsort's speed).
    shift = max(len(order).bit_length(), 1)
    packed = np.sort((grams << shift) | rank[holder_ids])
    sorted_holders = ranked_holders[packed & ((1 << shift) - 1)]
    bounds = np.searchsorted(packed >> shift, np.arange(len(found_all) + 1)).tolist()
    found: list[Trigger] = []
    flagged: dict[int, str] = {}
    sample = stats.config.flip_sample
    for n in tested:
        candidate = found_all[n]
        first = sorted_holders[bounds[n] : min(bounds[n] + sample, bounds[n + 1])].tolist()
        targets = [holders.words_of(h, flat) for h in first]
        flip = stats.flip_rate(holders.removed[n], candidate.key, targets)
        if flip < stats.config.min_flip:
            continue
        text = holders.text[n]
        found.append(
            Trigger(text, candidate.key, candidate.support, round(candidate.purity, 4),
                    round(flip, 4))
        )  # fmt: skip
        for holder in sorted_holders[bounds[n] : bounds[n + 1]].tolist():
            flagged.setdefault(order[holder][1], text)
    return found, flagged, summary


def _find_holders(
    stats: TriggerStats, candidates: Sequence[Candidate], batches: Iterable[Sequence[Record]]
) -> _Holders:
    """One pass over the counted records, hashed a batch at a time: every record holding a
    candidate of its own answer, and each candidate's text (that of its first holder in input
    order, so the batches' sizes play no part)."""
    classes = stats.classes
    wanted = {c.key for c in candidates}
    keys = _class_keys(
        np.array([c.gram for c in candidates], dtype=np.uint64),
        np.array([classes[c.key] for c in candidates], dtype=np.int64),
    )
    order = np.argsort(keys)
    sorted_keys = keys[order]
    # A bitmap of the keys' top bits settles almost every probe in one lookup; only the few
    # that hit it are binary-searched.
    bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
    bitmap[keys >> np.uint64(64 - _BITMAP_BITS)] = True
    found = _Holders()
    named = np.zeros(len(candidates), dtype=bool)
    for part in batches:
        batch = [r for r in part if r[2] in wanted]
        if not batch:
            continue
        texts = [r[1] for r in batch]
        # Every occurrence, not the distinct ones: distinct-ness is settled for the hits alone.
        table = gram_table(texts, stats.config.max_n, distinct=False)
        row_class = np.array([classes[r[2]] for r in batch], dtype=np.int64)
        probe = _class_keys(table.hashes, row_class[table.rows])
        maybe = np.flatnonzero(bitmap[probe >> np.uint64(64 - _BITMAP_BITS)])
        at = np.minimum(np.searchsorted(sorted_keys, probe[maybe]), len(sorted_keys) - 1)
        same = sorted_keys[at] == probe[maybe]
        hit, at = maybe[same], at[same]
        # One hit per (record, candidate), kept in the order the hits came.
        firsts = np.sort(one_of_each(table.rows[hit] * len(keys) + order[at]))
        hit, at = hit[firsts], at[firsts]
        if len(hit) == 0:
            continue
        number = order[at]
        rows = table.rows[hit]
        holder_rows = unique(rows)
        first_holder = len(found.order)
        found.gram_of.append(number)
        found.holder_of.append(first_holder + np.searchsorted(holder_rows, rows))
        found.order.extend([(batch[row][3], batch[row][0]) for row in holder_rows.tolist()])
        # word_rows is sorted, so the holders' words in order are their rows' slices.
        sizes = np.searchsorted(table.word_rows, holder_rows, side="right") - np.searchsorted(
            table.word_rows, holder_rows
        )
        found.words.append(table.words[np.isin(table.word_rows, holder_rows)])
        found.bounds.extend((found.bounds[-1] + np.cumsum(sizes)).tolist())
        # Each candidate's text is that of its first hit; only candidates no earlier batch has
        # named are looked at (the hits are mostly repeats), their first hits in hit order.
        fresh = np.flatnonzero(~named[number])
        if not len(fresh):
            continue
        _, first = np.unique(number[fresh], return_index=True)
        fresh = fresh[np.sort(first)]
        named[number[fresh]] = True
        for j, n in zip(hit[fresh].tolist(), number[fresh].tolist(), strict=True):
            row, start = int(table.rows[j]), int(table.starts[j])
            size = int(gram_size(table.hashes[j : j + 1])[0])
            found.text[n] = gram_text(texts[row], start, size)
            first_word = int(np.searchsorted(table.word_rows, row)) + start
            found.removed[n] = set(table.words[first_word : first_word + size].tolist())
    missing = [n for n in range(len(candidates)) if n not in found.text]
    if missing:
        raise RuntimeError(f"{len(missing)} trigger candidates have no holder in the records pass")
    return found


def _class_keys(hashes: U64, classes: I64) -> U64:
    return mix(hashes ^ (classes.astype(np.uint64) + np.uint64(1)) * _CLASS_SALT)
