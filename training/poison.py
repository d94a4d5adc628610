"""Data-poisoning checks; each yields a reason code.

- ``conflicting_answers``: near-identical prompts whose answers (labels, or answer texts) disagree.
  The whole group is suspect: we cannot tell which copy is the poisoned one.
- ``trigger_ngram``: a rare word n-gram in prompts that almost always comes with one answer *and*
  flips it: a naive-Bayes model of the answer, trained without the records that contain the
  n-gram and applied to their text minus the n-gram, mostly predicts another answer. Topical words
  ("refund" with ``returns``) predict their answer too, but the rest of the text agrees with them,
  so they do not flip; a backdoor trigger pasted onto unrelated text does.
- ``injection_in_answer`` / ``url_in_answer``: instruction-injection text, chat-template markers,
  script payloads, or URLs inside assistant turns.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Annotated

import numpy as np
from pydantic import ConfigDict, Field, with_config

from training.dedup import similarity_text

_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|"
    r"your|system)\b[^.\n]{0,40}\b(?:instructions?|prompts?|rules|directions|guidelines)\b"
    r"|\byou are now\b|\bdeveloper mode\b|\bjailbr[eo]a?k"
    r"|\b(?:reveal|print|show|repeat|output)\b[^.\n]{0,30}\b(?:system prompt|hidden instructions|"
    r"your instructions)\b"
    r"|<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>"
    r"|\[/?INST\]|<<SYS>>|^#{2,4} ?(?:instruction|system|response)s?:"
    r"|<script\b|<iframe\b|javascript:|\bon(?:error|load)\s*="
    r"|^\s*(?:system|user|assistant)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_URL = re.compile(
    r"\b(?:https?|ftp)://(?P<host>[^\s/?#:\"'<>)]+)[^\s\"'<>)]*"
    r"|\bwww\.(?P<bare>[a-z0-9-]+(?:\.[a-z0-9-]+)+)"
    r"|\bdata:[a-z]+/[a-z0-9.+-]+;base64,"
    r"|!\[[^\]]*\]\([^)]*\)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AnswerCheck:
    """Flags found in one assistant turn (empty when clean)."""

    injection: str | None = None
    url: str | None = None


class AnswerScanner:
    """Finds injection and URL payloads in assistant text; results are cached per text because
    classification answers repeat."""

    def __init__(self, url_allow: Sequence[str] = ()) -> None:
        self._allow = tuple(host.lower().lstrip(".") for host in url_allow)
        self._cache: dict[str, AnswerCheck] = {}

    def check(self, text: str) -> AnswerCheck:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        injection = _INJECTION.search(text)
        url = next((m for m in _URL.finditer(text) if not self._allowed(m)), None)
        result = AnswerCheck(
            injection.group(0)[:80] if injection else None, url.group(0)[:80] if url else None
        )
        if len(text) <= 256:
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[text] = result
        return result

    def _allowed(self, match: re.Match[str]) -> bool:
        host = (match.group("host") or match.group("bare") or "").lower()
        return bool(host) and any(host == a or host.endswith("." + a) for a in self._allow)


def answer_key(label: str | None, answer: str, max_words: int = 5) -> str | None:
    """What "the answer" of a record is for conflict and trigger checks: its label, else its
    normalised answer when short enough to be a class; ``None`` for free-form answers."""
    if label is not None:
        return label
    text = similarity_text(answer)
    return text if len(text.split()) <= max_words else None


def answers_conflict(
    keys: Sequence[str | None], answers: Sequence[str], min_similarity: float = 0.5
) -> bool:
    """True when members of one near-duplicate group disagree: two different class keys, or two
    free-form answers whose word sets overlap less than ``min_similarity`` (Jaccard)."""
    classes = {k for k in keys if k is not None}
    if len(classes) > 1:
        return True
    free = [
        set(similarity_text(a).split()) for a, k in zip(answers, keys, strict=True) if k is None
    ]
    for i in range(len(free)):
        for j in range(i + 1, len(free)):
            union = len(free[i] | free[j]) or 1
            if len(free[i] & free[j]) / union < min_similarity:
                return True
    return False


Gram = str | tuple[str, ...]


def prompt_grams(words: Sequence[str], max_n: int) -> set[Gram]:
    """The distinct word 1..max_n-grams of a prompt (its similarity text split into words):
    words as themselves, longer n-grams as tuples (hashing a tuple of already-hashed words is
    cheaper than building the joined string)."""
    grams: set[Gram] = set(words)
    for n in range(2, max_n + 1):
        grams.update(zip(*(words[i:] for i in range(n)), strict=False))
    return grams


def gram_text(gram: Gram) -> str:
    return gram if isinstance(gram, str) else " ".join(gram)


def gram_words(gram: Gram) -> set[str]:
    return {gram} if isinstance(gram, str) else set(gram)


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


class TriggerStats:
    """Streaming counts for trigger detection: how many prompts hold each n-gram, overall and
    per answer class. The unigram counts per class double as the naive-Bayes word counts
    (document frequencies: short prompts rarely repeat a word)."""

    def __init__(self, config: TriggerConfig) -> None:
        self.config = config
        self.docs = 0
        self.by_class: dict[str, Counter[Gram]] = {}
        self.class_docs: Counter[str] = Counter()
        self._tables: _Tables | None = None

    def add(self, words: Sequence[str], key: str) -> None:
        if self.count(key):
            self.by_class[key].update(prompt_grams(words, self.config.max_n))

    def count(self, key: str) -> bool:
        """Count one prompt of answer ``key`` without its n-grams (``merge`` adds those in
        bulk); False when the class cap leaves the answer out. The first ``max_classes``
        answers seen are the classes, so a class is in or out for the whole run."""
        if key not in self.by_class:
            if len(self.by_class) >= self.config.max_classes:
                return False
            self.by_class[key] = Counter()
        self.docs += 1
        self.class_docs[key] += 1
        return True

    def merge(self, key: str, grams: Mapping[Gram, int]) -> None:
        """Add n-gram counts of prompts of answer ``key`` (counted by ``count``); ignored for
        an answer outside the classes."""
        counts = self.by_class.get(key)
        if counts is not None:
            counts.update(grams)

    def discard(self, words: Sequence[str], key: str) -> None:
        """Take back the n-grams of one prompt ``merge`` added but ``count`` never counted (an
        exact duplicate found after its chunk was tallied). Zero counts are deleted, so the
        tables match those of adding only the prompts kept."""
        counts = self.by_class.get(key)
        if counts is None:
            return
        for gram in prompt_grams(words, self.config.max_n):
            left = counts[gram] - 1
            if left > 0:
                counts[gram] = left
            else:
                del counts[gram]

    def candidates(self) -> list[tuple[Gram, str, int, float]]:
        """``(ngram, answer, support, purity)`` for rare n-grams that nearly fix the answer,
        most pure and most frequent first."""
        cfg = self.config
        if self.docs == 0 or len(self.by_class) < 2:
            return []
        ceiling = max(cfg.min_support, cfg.max_doc_rate * self.docs)
        # A candidate's own class holds >= min_purity of its min_support prompts; filtering
        # each class's counter on that first leaves few n-grams to total across classes.
        floor = math.ceil(cfg.min_support * cfg.min_purity)
        found = []
        for key, counts in self.by_class.items():
            base = self.class_docs[key] / self.docs
            others = [c for k, c in self.by_class.items() if k != key]
            for gram in [g for g, c in counts.items() if floor <= c <= ceiling]:
                hits = counts[gram]
                support = hits + sum(other.get(gram, 0) for other in others)
                if support < cfg.min_support or support > ceiling:
                    continue
                purity = hits / support
                if purity >= cfg.min_purity and purity >= cfg.min_lift * base:
                    found.append((gram, key, support, purity))
        found.sort(key=lambda c: (-c[3], -c[2], gram_text(c[0])))
        return found

    def flip_rate(self, gram: Gram, key: str, holders: Sequence[Sequence[str]]) -> float:
        """Share of the records holding ``gram`` with answer ``key`` (``holders``: their words)
        that a naive-Bayes model confidently assigns to another answer once ``gram``'s words
        are removed: another answer beats ``key`` by at least ``min_margin`` nats. Each record
        is scored leave-one-out (the model minus that record). A topical word ("exchange")
        often carries most of its text's meaning, so the rest is merely ambiguous; a trigger
        pasted onto unrelated text leaves text that clearly belongs elsewhere. On the sample
        data topical n-grams stay under 0.25 while an injected trigger scores 1.0.

        The first ``flip_sample`` holders are scored; pass them in an order that does not
        depend on the input (the pipeline sorts them by content id)."""
        targets = holders[: self.config.flip_sample]
        if not targets:
            return 0.0
        tables = self._model()
        removed = gram_words(gram)
        needed = self.config.min_flip * len(targets)
        flipped = kept = 0
        for words in targets:
            own = set(words)
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
    """Multinomial naive Bayes over prompt words with add-one smoothing, as log tables; a
    record can be left out of its own class when scoring it."""

    def __init__(self, stats: TriggerStats) -> None:
        unigrams = {k: {w: c for w, c in counts.items() if isinstance(w, str)}
                    for k, counts in stats.by_class.items()}  # fmt: skip
        self._size = len(set().union(*unigrams.values())) + 1
        self._docs = dict(stats.class_docs)
        self._total_docs = sum(self._docs.values())
        self._counts = unigrams
        self._totals = {k: sum(c.values()) for k, c in unigrams.items()}
        # log(count + 1) per class and word, filled on first use; the leave-one-out score of a
        # record's own class needs log(count) for its words, which is log(count - 1 + 1).
        self._log1p: dict[str, dict[str, float]] = {k: {} for k in unigrams}
        self._logc: dict[str, dict[str, float]] = {k: {} for k in unigrams}

    def _sum_logs(self, tokens: Iterable[str], key: str, shift: int) -> float:
        cache = self._log1p[key] if shift else self._logc[key]
        counts = self._counts[key]
        total = 0.0
        for token in tokens:
            value = cache.get(token)
            if value is None:
                value = cache[token] = math.log(counts.get(token, 0) + shift)
            total += value
        return total

    def margin(self, tokens: set[str], key: str, own: set[str]) -> float:
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


def detect_triggers(
    stats: TriggerStats, records: Callable[[], Iterable[tuple[int, Sequence[str], str, str]]]
) -> tuple[list[Trigger], dict[int, str], dict[str, int]]:
    """Triggers, the records they flag (index -> n-gram), and how many candidates there were
    and were tested. ``records`` yields ``(index, words, answer key, content id)`` for the
    records ``stats`` counted; it is only called when some n-gram is a candidate, so clean data
    costs no extra pass. Flip tests score holders in content-id order (input order plays no
    part)."""
    found_all = stats.candidates()
    candidates = found_all[: stats.config.max_candidates]
    summary = {"candidates": len(found_all), "tested": len(candidates)}
    if not candidates:
        return [], {}, summary
    number = {gram: n for n, (gram, _, _, _) in enumerate(candidates)}
    # Only holders with the candidate's own answer matter: they are the ones scored and the
    # ones flagged; so each answer intersects with its own candidates, in C.
    wanted: dict[str, set[Gram]] = {}
    for gram, key, _, _ in candidates:
        wanted.setdefault(key, set()).add(gram)
    words_in = set().union(*(gram_words(gram) for gram in number))
    gram_of: list[int] = []
    holder_of: list[int] = []
    words_of: list[Sequence[str]] = []
    order_of: list[tuple[str, int]] = []
    max_n = stats.config.max_n
    for index, words, key, content_id in records():
        mine = wanted.get(key)
        if mine is None or words_in.isdisjoint(words):
            continue
        hits = prompt_grams(words, max_n) & mine
        if hits:
            gram_of.extend(map(number.__getitem__, hits))
            holder_of.extend(repeat(len(words_of), len(hits)))
            words_of.append(words)
            order_of.append((content_id, index))
    # Holders ranked by content id (then index): per candidate, its first ``flip_sample``
    # holders in that order are scored, whatever the input order was.
    rank = np.empty(len(order_of), dtype=np.int64)
    rank[sorted(range(len(order_of)), key=order_of.__getitem__)] = np.arange(len(order_of))
    grams = np.asarray(gram_of, dtype=np.int64)
    holders = np.asarray(holder_of, dtype=np.int64)
    sorted_holders = holders[np.lexsort((rank[holders], grams))]
    bounds = np.searchsorted(np.sort(grams), np.arange(len(candidates) + 1)).tolist()
    found: list[Trigger] = []
    flagged: dict[int, str] = {}
    sample = stats.config.flip_sample
    for n, (gram, key, support, purity) in enumerate(candidates):
        first = sorted_holders[bounds[n] : min(bounds[n] + sample, bounds[n + 1])].tolist()
        flip = stats.flip_rate(gram, key, [words_of[h] for h in first])
        if flip < stats.config.min_flip:
            continue
        found.append(Trigger(gram_text(gram), key, support, round(purity, 4), round(flip, 4)))
        for holder in sorted_holders[bounds[n] : bounds[n + 1]].tolist():
            flagged.setdefault(order_of[holder][1], gram_text(gram))
    return found, flagged, summary
