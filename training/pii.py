"""PII scrubbing: find personal data and secrets in free text and replace them with typed
placeholders (``<EMAIL>``, ``<PHONE>``, ...).

Detection is candidate-then-verify: a cheap regex proposes spans and a checksum or parser confirms
them (Luhn for cards via ``stdnum.luhn``, the IBAN mod-97 check via ``stdnum.iban``, SSN area and
group rules via ``stdnum.us.ssn``, ``phonenumbers`` for phones, ``ipaddress`` for IPs), so order
numbers and version strings that only look like PII survive. Secret shapes follow the token formats
their issuers document (the same shapes detect-secrets and gitleaks match); detect-secrets itself
scans files line by line and would cost a process-wide plugin scan per turn.

Types run in a fixed order and each pass sees the previous pass's placeholders, which contain no
digits, ``@`` or ``:``, so no later pattern can re-match them. ``scrub`` repeats until nothing
changes, which makes idempotence hold by construction rather than by careful regex reading.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from pydantic import ConfigDict, with_config
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.us import ssn as _ssn

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

_SECRET_SHAPES = re.compile(
    r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----.*?-----END [A-Z ]{0,40}PRIVATE KEY-----"
    r"|(?<![A-Za-z0-9_-])(?:"
    r"sk-(?:proj-|ant-|live-|svcacct-)?[A-Za-z0-9_-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")(?![A-Za-z0-9_-])",
    re.DOTALL,
)
# Only the credential after the keyword is secret; the keyword keeps the sentence readable.
_SECRET_KEYWORD = re.compile(
    r"(?P<kw>(?i:bearer)\s+|(?i:password|passwd|api[_-]?key|secret[_-]?key|access[_-]?token)"
    r"\s*[:=]\s*[\"']?)(?!<[A-Z]+>)(?P<val>[A-Za-z0-9._~+/=!@#$%^&*-]{8,})"
)
# Every fixed-shape token is at least 15 characters without whitespace (Slack's "xoxb-" and 10),
# private-key blocks start with "-----BEGIN", and the keyword forms need "bearer" or a ':' or '='.
# ``pii_screen`` mirrors these guards.
SECRET_MIN_TOKEN = 15
_SECRET_KEYWORDS = ("passw", "key", "token")
_DIGITS = "0123456789"
_CACHE_ENTRIES = 16384
_CACHE_MAX_CHARS = 2048
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{1,4}){3,9}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}"
    r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?:%[A-Za-z0-9._]{1,16})?(?![0-9A-Za-z:])"
)
_SSN = re.compile(r"(?<![0-9-])[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}(?![0-9-])")
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
# Phone candidates: optional + or 00, then digits with the separators people type. Everything
# beyond the shape (length, country plan, validity) is phonenumbers' call.
_PHONE = re.compile(r"(?<![0-9A-Za-z+])(?:\+|\b00)?\(?[0-9][0-9 ().\-/]{5,22}[0-9](?![0-9])")
# Every digit-bearing type (SSN, card, phone, IPv4, IBAN account part) has a run of at least
# seven digits and separators; text without one skips those patterns entirely.
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().\-/]{5,}[0-9]")
# SSN, card, phone and IBAN also need this many digits in the text (``pii_screen`` mirrors it).
DIGIT_GUARD = 7
_SPACE = re.compile(r"( )")
_SPACE_OR_DASH = re.compile(r"([ -])")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class PiiConfig:
    """Which PII types to scrub, and the region assumed for phone numbers written without ``+``."""

    types: tuple[str, ...] = PII_TYPES
    default_region: str = "US"


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
        self._region = self.config.default_region
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
        # Cheap tests decide which patterns can possibly match, so ordinary prose pays for a
        # lower-casing, a split and a few substring searches rather than seven regex scans.
        on = self._on
        if "secret" in on:
            words = text.split()
            if "-----BEGIN" in text or (words and max(map(len, words)) >= SECRET_MIN_TOKEN):
                text = _sub_counted(_SECRET_SHAPES, text, counts, "secret", _always)
            if _maybe_keyword_secret(text):
                text = _SECRET_KEYWORD.sub(lambda m: _keyword_repl(m, counts), text)
        if "email" in on and "@" in text:
            text = _sub_counted(_EMAIL, text, counts, "email", _always)
        if "ip" in on and text.count(":") >= 2:
            text = _sub_counted(_IPV6, text, counts, "ip", _is_ipv6)
        # Digit-bearing types need at least 4 digits (IPv4) or 7 (the rest, IBANs included:
        # every country's account part is numeric); counting is ten C-level scans.
        digits = sum(map(text.count, _DIGITS))
        if digits < 4:
            return text
        if "ip" in on and any(digit + "." in text for digit in _DIGITS):
            text = _sub_counted(_IPV4, text, counts, "ip", _is_ipv4)
        if digits < DIGIT_GUARD or _DIGIT_RUN.search(text) is None:
            return text
        if "iban" in on:
            text = _sub_windows(_IBAN, _SPACE, text, counts, "iban", _is_iban)
        if "ssn" in on:
            text = _sub_counted(_SSN, text, counts, "ssn", _is_ssn)
        if "card" in on:
            text = _sub_windows(_CARD, _SPACE_OR_DASH, text, counts, "card", _is_card)
        if "phone" in on:
            text = self._scrub_phone(text, counts)
        return text

    def _scrub_phone(self, text: str, counts: dict[str, int]) -> str:
        region = self._region

        def repl(match: re.Match[str]) -> str:
            candidate = match.group(0)
            if sum(c.isdigit() for c in candidate) < 7:
                return candidate
            if _is_phone(candidate, region):
                _bump(counts, "phone")
                return "<PHONE>"
            # A run that is not one number may still hold one (digits from the sentence glued
            # to it, two numbers in a row): let phonenumbers' own matcher look inside.
            return _phones_inside(candidate, region, counts)

        return _PHONE.sub(repl, text)


def scrub_text(text: str, config: PiiConfig | None = None) -> ScrubResult:
    """Scrub one text with a default (or given) configuration; convenience for callers and tests."""
    return _default_scrubber(config).scrub(text)


@lru_cache(maxsize=8)
def _default_scrubber(config: PiiConfig | None) -> Scrubber:
    return Scrubber(config)


def _maybe_keyword_secret(text: str) -> bool:
    lowered = text.lower()
    if "bearer" in lowered:
        return True
    if ":" not in text and "=" not in text:
        return False
    return any(keyword in lowered for keyword in _SECRET_KEYWORDS)


def _keyword_repl(match: re.Match[str], counts: dict[str, int]) -> str:
    _bump(counts, "secret")
    return f"{match.group('kw')}<SECRET>"


def _always(_candidate: str) -> bool:
    return True


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _sub_counted(
    pattern: re.Pattern[str],
    text: str,
    counts: dict[str, int],
    kind: str,
    verify: Callable[[str], bool],
) -> str:
    placeholder = PLACEHOLDERS[kind]

    def repl(match: re.Match[str]) -> str:
        candidate = match.group(0)
        if verify(candidate):
            _bump(counts, kind)
            return placeholder
        return candidate

    return pattern.sub(repl, text)


def _sub_windows(
    pattern: re.Pattern[str],
    separator: re.Pattern[str],
    text: str,
    counts: dict[str, int],
    kind: str,
    verify: Callable[[str], bool],
) -> str:
    """Like ``_sub_counted`` for patterns whose greedy match may swallow neighbouring groups
    (digits of the sentence before a card, a capitalised word after an IBAN): when the whole
    match fails its check, the leftmost, longest run of whole groups inside it that passes is
    replaced, and the rest is searched again."""
    placeholder = PLACEHOLDERS[kind]

    def repl(match: re.Match[str]) -> str:
        candidate = match.group(0)
        if verify(candidate):
            _bump(counts, kind)
            return placeholder
        parts = separator.split(candidate)
        return _replace_inside(parts, verify, placeholder, counts, kind, whole_checked=True)

    return pattern.sub(repl, text)


def _replace_inside(
    parts: list[str],
    verify: Callable[[str], bool],
    placeholder: str,
    counts: dict[str, int],
    kind: str,
    *,
    whole_checked: bool,
) -> str:
    # ``parts`` alternates group, separator, group, ... (re.split with a capturing group).
    groups = len(parts) // 2 + 1
    for start in range(groups):
        for end in range(groups, start, -1):
            window = "".join(parts[2 * start : 2 * end - 1])
            if whole_checked and (start, end) == (0, groups):
                continue
            if verify(window):
                _bump(counts, kind)
                head = "".join(parts[: 2 * start])
                rest = parts[2 * end :]
                tail = _replace_inside(rest, verify, placeholder, counts, kind, whole_checked=False)
                between = parts[2 * end - 1] if end < groups else ""
                return head + placeholder + between + tail
    return "".join(parts)


def _is_iban(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    return (
        len(compact) >= 15
        and compact[:2].isalpha()
        and compact[2:4].isdigit()
        and bool(_iban.is_valid(compact))
    )


def _is_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _is_ssn(candidate: str) -> bool:
    return bool(_ssn.is_valid(candidate.replace(" ", "-")))


def _is_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    # Issuer numbers start 2-6; a run starting 0/1/7-9 is an order or reference number.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and bool(_luhn.is_valid(digits))


def _is_phone(candidate: str, region: str) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _phones_inside(candidate: str, region: str, counts: dict[str, int]) -> str:
    pieces: list[str] = []
    last = 0
    for found in phonenumbers.PhoneNumberMatcher(candidate, region):
        pieces.append(candidate[last : found.start])
        pieces.append("<PHONE>")
        _bump(counts, "phone")
        last = found.end
    if not pieces:
        return candidate
    pieces.append(candidate[last:])
    return "".join(pieces)
