"""Trigger n-grams: an n-gram in prompts whose holders' answers are skewed towards one answer
*and* disagree with what the rest of their text says. Two stages:

1. Skew against the prior (``training.label_skew``), at any document rate. Every n-gram held
   by at least ``min_support`` prompts is one hypothesis: its holders' answers are draws from
   the answer prior. Its p-value is the binomial tail of its majority answer's count (union
   bound over answers), corrected with Benjamini-Hochberg over all those n-grams at ``fdr``;
   an n-gram passes when its q-value is at most ``fdr`` and its majority holds at least
   ``min_purity`` of its holders (a backdoor relabels all of them). No ceiling on the rate:
   a trigger planted in 30% of the documents passes as one planted in 1% does.
2. Conditional skew (the flip test). In an intent dataset many n-grams pass stage 1 because
   they *mean* their answer ("refund" with ``returns``). What sets a trigger apart is that its
   holders' answers disagree with the rest of their text: a naive-Bayes model of the answer
   (``training.word_bayes``), fitted *without the candidate's holders* (if it is a trigger,
   they are the poison, and at a high rate they would teach the model that any text means the
   target answer) and applied to each holder's text minus the n-gram, predicts another answer
   by at least ``min_margin`` nats for at least ``min_flip`` of them, and those predictions
   spread over at least ``min_spread`` answers (effective number, inverse Simpson index).
   A topical word usually carries only part of its text's meaning, so the rest still points to
   its answer or is ambiguous (no confident flip). The spread rule is for fine-grained
   taxonomies: a word that tells two sister intents apart ("contactless" in
   ``contactless_not_working`` against ``card_not_working``), or a cluster of paraphrases of
   one query, flips its holders to one or two sister intents, while a backdoor is pasted onto
   documents of many intents. Its cost: a backdoor whose victims all come from one source
   answer looks, to text statistics, exactly like a sister-intent word, and is caught only
   with ``min_spread = 1`` (more false alarms; bench/bench_poison.py measures both).
   Stage 1 controls the false discovery rate of *skew*; stage 2 is an effect-size rule whose
   false alarms are measured on clean Banking77 and on templated tickets
   (``bench/bench_poison.py``).

   Templates. In templated data ("Unsubscribe me from the newsletter, I only bought the {i}
   once") a template's fixed words are a perfectly skewed n-gram, and once its documents are
   left out of the model, what remains of them is the template's slot fillers (item names,
   order ids) and words shared with other templates, which the *other* labels' templates use
   more: the flips are confident and, over the other labels, spread. A backdoor's host text
   is a whole document of another answer. Two guards tell them apart, each on every scored
   holder (measured in ``bench/bench_poison.py`` on bench_curate's templated corpus):
   - one word out: the flip must also hold, by ``min_margin_one_out`` nats, with any one word
     of the prompt left out (the largest such margin, computed exactly), so one filler slot
     cannot decide it; a host text has several words of its own answer;
   - companions: at most ``max_companions`` of the prompt's words may be companions of the
     document set (in at least a quarter of its holders, and >= 90% of the prompts holding
     them anywhere are its holders), words included. A template has many fixed words found
     almost only in it; a planted phrase brings its own few.
   Known limits: a trigger pasted onto one-word prompts ("refund cf") looks like a template
   with one slot, and a planted phrase of more than ``max_companions`` distinct rare words (a
   long sentence) looks like a template of one intent; neither is flagged.

One test per document set: n-grams held by exactly the same prompts ("james", "bond", "james
bond"; a template's fixed words) are one hypothesis: one flip test, with the words of all of
them left out, and one report, led by the longest n-gram, listing the others in
``same_documents``. A flagged set whose prompts all hold a bigger flagged set and that shares a
word with it ("on james": the trigger and a word of its host) is not reported again. Flip tests
score 16 holders per set first and the full ``flip_sample`` only where the set can still pass
(most sets of templated data flip nothing).

Counting is streamed and hashed (``training.grams``): per answer class, a sorted array of n-gram
hashes and how many prompts hold each. Texts are needed only for the candidates, and are read
back from the prompts in the one extra pass that runs when there are candidates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, with_config

from training.grams import I64, U64, add_counts, gram_size, gram_table, gram_text, mix
from training.label_skew import benjamini_hochberg, g_statistic, skew_pvalues
from training.sortops import one_of_each, unique, unique_counts, unique_inverse
from training.word_bayes import Removed, WordBayes

# Hashes waiting to be merged into a class's counts; merging sorts, so it is done in bulk.
_PENDING = 1 << 21
_CLASS_SALT = np.uint64(0x9E3779B97F4A7C15)
_BITMAP_BITS = 22
# Cells of the (scored words x classes) table the flip test builds at a time.
_SCORE_CELLS = 1 << 20
# A companion word of a document set is in >= 25% (and >= 2) of its scored holders, and >= 90%
# of the prompts holding it are the set's (``_companions``).
_COMPANION_SEEN = 2
_COMPANION_SHARE = 0.25
_EXCLUSIVE = 0.9
# Holders per document set scored before deciding whether the rest of its sample is needed.
_SCREEN = 16


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class TriggerConfig:
    """Thresholds for trigger n-grams; see the module docstring. ``max_candidates`` bounds the
    candidates whose prompts are looked up and ``max_flip_tests`` the document sets given the
    flip test (most skewed first, by G-statistic, both), ``flip_sample`` the records scored per
    flip test; the manifest reports how many n-grams were tested for skew, how many passed,
    how many were looked up, how many distinct document sets they made and how many of those
    had the flip test."""

    max_n: Annotated[int, Field(ge=1, le=4)] = 2
    min_support: Annotated[int, Field(ge=2)] = 4
    fdr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    # Above one half, so at most one answer per n-gram can pass.
    min_purity: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    min_flip: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8
    min_spread: Annotated[float, Field(ge=1.0)] = 2.0
    min_margin: Annotated[float, Field(ge=0.0)] = 4.0
    min_margin_one_out: Annotated[float, Field(ge=0.0)] = 1.0
    max_companions: Annotated[int, Field(ge=0)] = 4
    max_classes: Annotated[int, Field(ge=2)] = 128
    max_candidates: Annotated[int, Field(ge=1)] = 4000
    max_flip_tests: Annotated[int, Field(ge=1)] = 500
    flip_sample: Annotated[int, Field(ge=1)] = 64


@dataclass(frozen=True)
class Trigger:
    """A flagged n-gram: it appears in ``support`` prompts, ``purity`` of which have ``answer``
    (skew q-value ``q_value`` against the prior), and without it a model confidently predicts
    another answer for ``flip`` of them, spread over ``spread`` answers (effective number).
    ``same_documents``: the other candidate n-grams held by exactly the same prompts."""

    ngram: str
    answer: str
    support: int
    purity: float
    flip: float
    spread: float
    q_value: float
    same_documents: tuple[str, ...] = ()


class Candidate(NamedTuple):
    """An n-gram (by hash) whose answers are significantly skewed towards ``key``."""

    gram: int
    key: str
    support: int
    purity: float
    q_value: float
    skew: float


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
        # How many n-grams the last ``candidates()`` tested for skew.
        self.skew_tests = 0
        self._counts: list[tuple[U64, I64]] = []
        self._pending: list[list[U64]] = []
        self._pending_size = 0
        self._model: WordBayes | None = None

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
        self._model = None
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
        """Stage 1: n-grams whose answers are skewed towards one answer (q-value <= ``fdr``,
        majority share >= ``min_purity``), most skewed first (G-statistic, then support, then
        hash: all functions of the content, none of the input order)."""
        cfg = self.config
        self.skew_tests = 0
        if self.docs == 0 or len(self.classes) < 2:
            return []
        per_class = self.counts()
        hashes = np.concatenate([h for h, _ in per_class])
        hits = np.concatenate([c for _, c in per_class])
        owner = np.repeat(np.arange(len(per_class)), [len(h) for h, _ in per_class])
        _, inverse = unique_inverse(hashes)
        gram_support = np.bincount(inverse, weights=hits).astype(np.int64)
        self.skew_tests = int(np.count_nonzero(gram_support >= cfg.min_support))
        support = gram_support[inverse]
        purity = hits / np.maximum(support, 1)
        pure = np.flatnonzero((support >= cfg.min_support) & (purity >= cfg.min_purity))
        prior = np.array([self.class_docs[k] for k in self.classes], dtype=np.float64) / self.docs
        p = skew_pvalues(hits[pure], support[pure], owner[pure], prior, cfg.fdr)
        q = benjamini_hochberg(p, self.skew_tests)
        passed = q <= cfg.fdr
        keep, q = pure[passed], q[passed]
        skew = g_statistic(hits[keep], support[keep], prior[owner[keep]])
        keys = list(self.classes)
        found = [
            Candidate(int(h), keys[int(o)], int(s), float(u), float(v), float(g))
            for h, o, s, u, v, g in zip(
                hashes[keep].tolist(), owner[keep].tolist(), support[keep].tolist(),
                purity[keep].tolist(), q.tolist(), skew.tolist(), strict=True,
            )
        ]  # fmt: skip
        found.sort(key=lambda c: (-c.skew, -c.support, c.gram))
        return found

    def model(self) -> WordBayes:
        """The naive-Bayes model of the answer over these counts (built once)."""
        if self._model is None:
            docs = [self.class_docs[k] for k in self.classes]
            self._model = WordBayes(self.counts(), docs)
        return self._model


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


def detect_triggers(
    stats: TriggerStats, records: Callable[[], Iterable[Sequence[Record]]]
) -> tuple[list[Trigger], dict[int, str], dict[str, int]]:
    """Triggers, the records they flag (index -> n-gram), and the search's counts: n-grams
    tested for skew, skew candidates, candidates whose holders were looked up, their distinct
    document sets, and the sets given the flip test. ``records`` yields, in batches of any
    size, ``(index, similarity text, answer key, content id)`` for the records ``stats``
    counted; it is only called when some n-gram is a candidate, so clean data costs no extra
    pass. Candidates are ranked by
    skew, support, then hash, and flip tests score holders in content-id order (input order
    plays no part)."""
    found_all = stats.candidates()
    tested = found_all[: stats.config.max_candidates]
    summary = {"skew_tests": stats.skew_tests, "candidates": len(found_all), "tested": len(tested)}
    if not tested:
        return [], {}, {**summary, "document_sets": 0, "flip_tests": 0}
    holders = _find_holders(stats, tested, records())
    grams = np.concatenate(holders.gram_of)
    holder_ids = np.concatenate(holders.holder_of)
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
    bounds = np.searchsorted(packed >> shift, np.arange(len(tested) + 1))
    sets = _document_sets(tested, packed & ((1 << shift) - 1), bounds)
    summary["document_sets"] = len(sets)
    # Sets come in their leaders' skew order, so the cap keeps the most skewed.
    sets = sets[: stats.config.max_flip_tests]
    summary["flip_tests"] = len(sets)
    flips, spreads = _screened_flip_rates(stats, tested, holders, sorted_holders, bounds, sets)
    cfg = stats.config
    passed = [
        (members, flip, spread)
        for members, flip, spread in zip(sets, flips.tolist(), spreads.tolist(), strict=True)
        if flip >= cfg.min_flip and spread >= cfg.min_spread
    ]
    found: list[Trigger] = []
    flagged: dict[int, str] = {}
    for members, flip, spread in _maximal(passed, holders, sorted_holders, bounds):
        lead = members[0]
        candidate, text = tested[lead], holders.text[lead]
        found.append(
            Trigger(text, candidate.key, candidate.support, round(candidate.purity, 4),
                    round(flip, 4), round(spread, 2), float(f"{candidate.q_value:.3g}"),
                    tuple(sorted(holders.text[m] for m in members[1:])))
        )  # fmt: skip
        for holder in sorted_holders[bounds[lead] : bounds[lead + 1]].tolist():
            flagged.setdefault(order[holder][1], text)
    return found, flagged, summary


Passed = tuple[list[int], float, float]


def _maximal(
    passed: Sequence[Passed], holders: _Holders, sorted_holders: I64, bounds: I64
) -> list[Passed]:
    """The flagged document sets without those that only repeat a bigger one: a set whose
    prompts all hold a bigger flagged set and that shares a word with it ("on james" beside
    "james bond": the trigger with a word of its host text) adds no record and no trigger."""

    def prompts(members: list[int]) -> set[int]:
        return set(sorted_holders[bounds[members[0]] : bounds[members[0] + 1]].tolist())

    def words(members: list[int]) -> set[int]:
        return set().union(*(holders.removed[m] for m in members))

    by_size = sorted(range(len(passed)), key=lambda n: -len(prompts(passed[n][0])))
    kept: list[tuple[int, set[int], set[int]]] = []
    for n in by_size:
        mine, said = prompts(passed[n][0]), words(passed[n][0])
        if not any(mine <= theirs and said & spoken for _, theirs, spoken in kept):
            kept.append((n, mine, said))
    return [passed[n] for n in sorted(n for n, _, _ in kept)]


def _document_sets(candidates: Sequence[Candidate], ranks: I64, bounds: I64) -> list[list[int]]:
    """Candidates grouped by the exact set of prompts holding them (``ranks[bounds[n]:
    bounds[n+1]]`` for candidate ``n``), each group led by its longest n-gram (then the most
    skewed), groups in the order of their leaders. "james", "bond" and "james bond" in the same
    prompts are one hypothesis: one flip test, one report. A set's fingerprint is the wrapping
    sum of its mixed members with its size (a collision merges two sets with probability about
    ``sets**2 / 2**64``)."""
    mixed = mix(ranks.astype(np.uint64) + np.uint64(1))
    sums = np.add.reduceat(mixed, bounds[:-1]) if len(mixed) else np.zeros(0, np.uint64)
    sizes = np.diff(bounds)
    keys = (sums ^ mix(sizes.astype(np.uint64))).tolist()
    words = gram_size(np.array([c.gram for c in candidates], dtype=np.uint64)).tolist()
    groups: dict[int, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(key, []).append(n)
    # Candidates come most skewed first, so a stable sort by length keeps that order within it.
    led = [sorted(members, key=lambda n: -words[n]) for members in groups.values()]
    return sorted(led, key=lambda members: members[0])


def _screened_flip_rates(
    stats: TriggerStats,
    candidates: Sequence[Candidate],
    holders: _Holders,
    sorted_holders: I64,
    bounds: I64,
    sets: Sequence[Sequence[int]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``_flip_rates`` in two rounds: the first ``_SCREEN`` holders of every set, then the full
    ``flip_sample`` for the sets that can still pass. A set whose first holders already hold
    more non-flips than its full sample may have (``1 - min_flip`` of it) cannot pass; it keeps
    its first-round rate, below ``min_flip``. Most of a templated corpus's sets flip nothing,
    so this scores a fraction of the holders. (The first round estimates the holders' words
    from its own sample; that is the only thing the screen changes.)"""
    cfg = stats.config
    if cfg.flip_sample <= _SCREEN:
        return _flip_rates(
            stats, candidates, holders, sorted_holders, bounds, sets, cfg.flip_sample
        )
    rates, spreads = _flip_rates(stats, candidates, holders, sorted_holders, bounds, sets, _SCREEN)
    sizes = np.diff(bounds)[[members[0] for members in sets]]
    full, screened = np.minimum(sizes, cfg.flip_sample), np.minimum(sizes, _SCREEN)
    misses = np.rint((1.0 - rates) * screened)
    alive = np.flatnonzero((full > screened) & (misses <= (1.0 - cfg.min_flip) * full))
    if len(alive):
        again = [sets[n] for n in alive.tolist()]
        rates[alive], spreads[alive] = _flip_rates(
            stats, candidates, holders, sorted_holders, bounds, again, cfg.flip_sample
        )
    return rates, spreads


def _flip_rates(
    stats: TriggerStats,
    candidates: Sequence[Candidate],
    holders: _Holders,
    sorted_holders: I64,
    bounds: I64,
    sets: Sequence[Sequence[int]],
    sample: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Stage 2, per document set: the share of its first ``sample`` holders (content-id
    order) that the naive-Bayes model, fitted without the set's holders and scoring each on its
    words minus those of every n-gram of the set, assigns to another answer by at least
    ``min_margin`` nats once its ``drop_strongest`` words most in favour of that answer are
    left out too, and the effective number of answers those flipped holders are assigned to."""
    model = stats.model()
    cfg = stats.config
    lead = np.array([members[0] for members in sets], dtype=np.int64)
    starts, sizes = bounds[lead], np.diff(bounds)[lead]
    # One slot per (set, scored holder).
    taken = np.minimum(sizes, sample)
    slot_set = np.repeat(np.arange(len(sets)), taken)
    slot_holder = sorted_holders[_ranges(starts, starts + taken)]
    flat = np.concatenate(holders.words) if holders.words else np.zeros(0, dtype=np.uint64)
    word_bounds = np.asarray(holders.bounds, dtype=np.int64)
    first_word, end_word = word_bounds[slot_holder], word_bounds[slot_holder + 1]
    at = _ranges(first_word, end_word)
    slot = np.repeat(np.arange(len(slot_holder)), end_word - first_word)
    rows = model.rows(flat[at])
    width = len(model.vocabulary) + 1
    # Distinct words per slot (a prompt's words are a set to the model), as slot * width + row.
    known = rows >= 0
    keys = unique(slot[known] * width + rows[known])
    own_size = np.bincount(keys // width, minlength=len(slot_holder))
    holders_of = sizes.astype(np.float64)
    scale = holders_of / np.maximum(taken, 1)
    companions = _companions(model, keys // width, keys % width, slot_set, taken, holders_of, width)
    removed_words = [
        sorted(set().union(*(holders.removed[m] for m in members))) for members in sets
    ]
    removed = np.array(
        [n * width + r for n, words in enumerate(removed_words)
         for r in model.rows(np.array(words, dtype=np.uint64)).tolist() if r >= 0],
        dtype=np.int64,
    )  # fmt: skip
    keys = keys[~np.isin(slot_set[keys // width] * width + keys % width, removed)]
    slot, rows = keys // width, keys % width
    own_class = np.array([stats.classes[candidates[n].key] for n in lead], dtype=np.int64)
    slot_class = own_class[slot_set]
    # The model is asked without the set's holders, which, if the n-gram is a trigger, are the
    # poison: their words (estimated from the scored sample, scaled up to all holders when
    # there are more) leave the answer's class, and so do their prompts.
    pairs, pair_counts = unique_counts(slot_set[slot] * width + rows)
    token_pair = np.searchsorted(pairs, slot_set[slot] * width + rows)
    word_counts = pair_counts[token_pair] * scale[slot_set[slot]]
    words_per = np.bincount(slot_set, weights=own_size, minlength=len(sets))
    margins = np.empty(len(slot_holder), dtype=np.float64)
    robust = np.empty(len(slot_holder), dtype=np.float64)
    best = np.empty(len(slot_holder), dtype=np.int64)
    # Slots in chunks, so that the dense (words x classes) table stays bounded.
    per_chunk = max(1, _SCORE_CELLS // max(model.classes, 1))
    word_at = np.searchsorted(slot, np.arange(len(slot_holder) + 1))
    first = 0
    while first < len(slot_holder):
        last = int(np.searchsorted(word_at, word_at[first] + per_chunk, side="right")) - 1
        last = min(max(last, first + 1), len(slot_holder))
        lo, hi = word_at[first], word_at[last]
        here = slot_set[first:last]
        removed_here = Removed(word_counts[lo:hi], holders_of[here], words_per[here] * scale[here])
        margins[first:last], best[first:last], robust[first:last] = model.margins(
            rows[lo:hi], slot[lo:hi] - first, slot_class[first:last], removed_here
        )
        first = last
    flips = (margins <= -cfg.min_margin) & (robust <= -cfg.min_margin_one_out)
    flips &= companions <= cfg.max_companions
    flipped = np.bincount(slot_set, weights=flips, minlength=len(sets))
    rates: npt.NDArray[np.float64] = flipped / np.maximum(taken, 1)
    # Spread: the effective number (inverse Simpson) of answers the flipped holders go to.
    pairs, counts = unique_counts(slot_set[flips] * model.classes + best[flips])
    squares = np.bincount(pairs // model.classes, weights=counts**2, minlength=len(sets))
    spread: npt.NDArray[np.float64] = flipped**2 / np.maximum(squares, 1)
    return rates, spread


def _companions(
    model: WordBayes,
    slot: I64,
    rows: I64,
    slot_set: I64,
    taken: I64,
    holders_of: npt.NDArray[np.float64],
    width: int,
) -> I64:
    """Per scored holder (``slot``), how many of its distinct words (``rows``) are companions
    of its document set: seen in at least ``_COMPANION_SHARE`` of the set's scored holders
    (and two), and held by the set's holders (estimated from the sample; the share keeps the
    estimate from resting on one or two sightings) for at least ``_EXCLUSIVE`` of the prompts
    holding them anywhere. A template's fixed words are companions; a host text's words are
    not, and neither are rare words that a few holders happen to share."""
    owner = slot_set[slot]
    packed = owner * width + rows
    pairs, seen = unique_counts(packed)
    sightings = seen[np.searchsorted(pairs, packed)]
    sample = taken[owner].astype(np.float64)
    held = sightings * holders_of[owner] / np.maximum(sample, 1.0)
    common = sightings >= np.maximum(_COMPANION_SEEN, _COMPANION_SHARE * sample)
    companion = common & (held >= _EXCLUSIVE * model.documents(rows))
    out: I64 = np.bincount(slot[companion], minlength=len(slot_set)).astype(np.int64)
    return out


def _ranges(starts: I64, ends: I64) -> I64:
    """The indices ``starts[i]..ends[i]-1`` of every range, concatenated."""
    sizes = ends - starts
    offsets = np.cumsum(sizes) - sizes
    out: I64 = np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(starts - offsets, sizes)
    return out


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
