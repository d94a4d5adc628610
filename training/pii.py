"""PII scrubbing: find personal data and secrets in free text and replace them with typed
placeholders (``<EMAIL>``, ``<PHONE>``, ...).

Matching reads a folded copy of the text (``pii_text.fold``: NFKC, invisible characters dropped,
any script's digits as ASCII) and replaces through a map back to the original, so full-width and
zero-width-split PII is found while the prose around it stays as written. The finders, one per
type, are in ``pii_find`` (candidate regex, then a checksum or parser).

Types run in a fixed order; each type's spans are masked before the next looks, so one character
belongs to one span. ``scrub`` repeats until nothing changes, which makes idempotence hold by
construction rather than by careful regex reading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from pydantic import ConfigDict, with_config

from training import pii_find
from training.pii_text import fold

PII_TYPES: tuple[str, ...] = ("secret", "email", "iban", "ip", "ssn", "card", "phone")
PLACEHOLDERS: Mapping[str, str] = {
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "ip": "<IP>",
    "ssn": "<SSN>",
    "card": "<CARD>",
    "phone": "<PHONE>",
}
# A scrubbed text converges in one or two passes; the bound only guards against a pattern bug.
_MAX_PASSES = 4

# Fixed-shape secret tokens are at least 15 characters without whitespace (Slack's "xoxb-" and
# 10); armoured blocks start with "-BEGIN". ``pii_screen`` mirrors every guard below.
SECRET_MIN_TOKEN = 15
# Words (lower-cased) that send a text to a pattern on their own, only beside a ':' or '=', and
# only beside at least MIN_DIGITS_FOR_CODES digits (PINs and card security codes).
ALONE_WORDS: tuple[str, ...] = (
    "-begin", "bearer", "passw", "passc", "passp", "pwd",
    "%40", "&#", "&commat", "(at)", "[at]", "{at}", "<at>", "dot",
)  # fmt: skip
# Of ALONE_WORDS, the password words: after one, ``pii_find._STATED`` takes a value only behind
# a connector (":", "=", "#", " is ", " was ") and ``_ASSIGN`` only behind ':' or '=', so in a
# text that ``PASSWORD_CONNECTOR`` does not match they change nothing (``pii_screen`` clears
# such texts; "my password reset email never comes" is common in support tickets).
PASSWORD_WORDS: tuple[str, ...] = ("passw", "passc", "passp", "pwd")
PASSWORD_CONNECTOR = re.compile(r"[:=#]|(?i:pass(?:word|wd|code|phrase)|pwd)\s+(?i:is|was)\s")
ASSIGN_WORDS: tuple[str, ...] = ("key", "token", "secret", "auth", "credential")
CODE_WORDS: tuple[str, ...] = ("pin", "cvv", "cvc", "csc")
MIN_DIGITS_FOR_CODES = 3
# SSN, card and phone need this many digits in the text and a run of digits and separators.
DIGIT_GUARD = 7
RUN_CHARS = "0123456789 ().-/_+\t"
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().\-/_+\t]{5,}[0-9]")
_DIGITS = "0123456789"
_EMAIL_WORDS = ("@", "%40", "&#", "&commat", "(at)", "[at]", "{at}", "<at>")
_CACHE_ENTRIES = 16384
_CACHE_MAX_CHARS = 2048
# Found spans are overwritten with this before the next type looks, so no two types claim one
# character; it is in no pattern's character class.
_MASK = "\x00"
# Phones with a trunk "0" and no "+" are tried as national numbers of these regions too.
NATIONAL_REGIONS: tuple[str, ...] = ("GB", "DE", "FR", "IT", "NL", "AU", "IN", "JP", "BR", "ZA")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class PiiConfig:
    """Which PII types to scrub; the region assumed for phone numbers written without ``+``, and
    the regions also tried for national numbers with a trunk ``0`` ("07400 123456")."""

    types: tuple[str, ...] = PII_TYPES
    default_region: str = "US"
    national_regions: tuple[str, ...] = NATIONAL_REGIONS


@dataclass(frozen=True)
class ScrubResult:
    """A scrubbed text and how many spans of each type were replaced (absent types are zero)."""

    text: str
    counts: Mapping[str, int]


class Scrubber:
    """Scrubs texts for the configured PII types; stateless apart from compiled settings and a
    bounded cache of recent results (system prompts and short answers repeat across a corpus)."""

    def __init__(self, config: PiiConfig | None = None) -> None:
        self.config = config or PiiConfig()
        unknown = set(self.config.types) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {list(PII_TYPES)}")
        self._on = frozenset(self.config.types)
        regions = (self.config.default_region, *self.config.national_regions)
        self._regions = tuple(dict.fromkeys(regions))
        self._cache: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}

    def scrub(self, text: str) -> ScrubResult:
        """Replace every PII span in ``text``; ``scrub(scrub(t).text).text == scrub(t).text``."""
        counts: dict[str, int] = {}
        return ScrubResult(self.scrub_fast(text, counts), counts)

    def scrub_fast(self, text: str, counts: dict[str, int]) -> str:
        """``scrub`` for the hot path: adds to ``counts`` in place and skips the result object."""
        cached = self._cache.get(text)
        if cached is not None:
            for key, value in cached[1]:
                counts[key] = counts.get(key, 0) + value
            return cached[0]
        found: dict[str, int] = {}
        result = text
        for _ in range(_MAX_PASSES):
            before = result
            result = self._scrub_once(result, found)
            if result == before:
                break
        if len(text) <= _CACHE_MAX_CHARS:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[text] = (result, tuple(found.items()))
        for key, value in found.items():
            counts[key] = counts.get(key, 0) + value
        return result

    def _scrub_once(self, text: str, counts: dict[str, int]) -> str:
        folded = fold(text)
        spans = self._find(folded.work)
        if not spans:
            return text
        pieces: list[str] = []
        last = 0
        for start, end, kind in _merge(spans):
            start, end = folded.span(start, end)
            pieces += (text[last:start], PLACEHOLDERS[kind])
            _bump(counts, kind)
            last = end
        pieces.append(text[last:])
        return "".join(pieces)

    def _find(self, work: str) -> list[tuple[int, int, str]]:
        # Cheap tests decide which patterns can possibly match, so ordinary prose pays for a
        # lower-casing, a split and a few substring searches rather than a dozen regex scans.
        on = self._on
        spans: list[tuple[int, int, str]] = []

        def take(kind: str, found: list[tuple[int, int]]) -> None:
            nonlocal work
            if found:
                spans.extend((start, end, kind) for start, end in found)
                work = _masked(work, found)

        lowered = work.lower()
        digits = sum(map(work.count, _DIGITS))
        if "secret" in on:
            words = work.split()
            if "-begin" in lowered or (words and max(map(len, words)) >= SECRET_MIN_TOKEN):
                take("secret", pii_find.find_secrets(work))
            if _keyword_guard(work, lowered, digits):
                take("secret", pii_find.find_keyword_secrets(work))
        if "email" in on:
            if any(word in lowered for word in _EMAIL_WORDS):
                take("email", pii_find.find_emails(work))
            if "dot" in lowered:
                take("email", pii_find.find_spelled_emails(work))
        if "ip" in on and work.count(":") >= 2:
            take("ip", pii_find.find_ipv6(work))
        if digits < 4:
            return spans
        if "ip" in on and any(digit + "." in work for digit in _DIGITS):
            take("ip", pii_find.find_ipv4(work))
        # Every IBAN starts with two letters and two digits ("GB82", "gb82").
        if "iban" in on and pii_find.IBAN_START.search(work) is not None:
            take("iban", pii_find.find_ibans(work))
        if digits < DIGIT_GUARD or _DIGIT_RUN.search(work) is None:
            return spans
        if "ssn" in on:
            take("ssn", pii_find.find_ssns(work))
        if "card" in on:
            take("card", pii_find.find_cards(work))
        if "phone" in on:
            take("phone", pii_find.find_phones(work, self._regions))
        return spans


def scrub_text(text: str, config: PiiConfig | None = None) -> ScrubResult:
    """Scrub one text with a default (or given) configuration; convenience for callers and tests."""
    return _default_scrubber(config).scrub(text)


@lru_cache(maxsize=8)
def _default_scrubber(config: PiiConfig | None) -> Scrubber:
    return Scrubber(config)


def _keyword_guard(work: str, lowered: str, digits: int) -> bool:
    if any(word in lowered for word in ALONE_WORDS):
        return True
    if ("=" in work or ":" in work) and any(word in lowered for word in ASSIGN_WORDS):
        return True
    return digits >= MIN_DIGITS_FOR_CODES and any(word in lowered for word in CODE_WORDS)


def _masked(work: str, found: list[tuple[int, int]]) -> str:
    pieces: list[str] = []
    last = 0
    for start, end in sorted(found):
        start = max(start, last)
        if end <= start:
            continue
        pieces += (work[last:start], _MASK * (end - start))
        last = end
    pieces.append(work[last:])
    return "".join(pieces)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Spans in order, overlapping ones joined under the first one's type."""
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans):
        if merged and start < merged[-1][1]:
            head = merged[-1]
            merged[-1] = (head[0], max(head[1], end), head[2])
        else:
            merged.append((start, end, kind))
    return merged


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
