"""The text the PII patterns read: NFKC-folded, invisible characters and combining marks
dropped, every script's decimal digits and dashes written as ASCII, with a map back to the
original characters.

Matching on the folded text catches full-width digits (``＋４４``), zero-width splits
(``jane\u200b@example.com``) and Unicode dashes; replacing through the map keeps every character
outside a PII span exactly as it was written, so scrubbing never rewrites ordinary prose (NFKC on
the whole text would turn ``ﬁ`` into ``fi`` and half-width katakana into full-width).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Format characters that render as nothing (or as a soft hyphen only at a line break) and so can
# be slipped inside an address or number without the reader noticing.
_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069"
    "\u3164\ufeff\uffa0"
)
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d")
# Anything the fold would change: a non-ASCII digit, an invisible character or a dash; NFKC
# itself is checked with ``unicodedata.is_normalized`` (a C-level scan).
_SPECIAL = re.compile("[" + "".join(sorted(_INVISIBLE | _DASHES)) + "]|(?![0-9])\\d", re.UNICODE)


@dataclass(frozen=True)
class Folded:
    """``work`` is what the patterns read; ``origin[i]`` is the index in the original text of
    the character that ``work[i]`` came from (``None``: the two are the same text)."""

    work: str
    origin: list[int] | None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span behind ``work[start:end]`` (whole characters, and any invisible
        characters inside it)."""
        if self.origin is None:
            return start, end
        return self.origin[start], self.origin[end - 1] + 1


def fold(text: str) -> Folded:
    """Fold ``text`` for matching; ASCII and already-plain text is returned as it is."""
    if text.isascii() or (
        unicodedata.is_normalized("NFKC", text)
        and _SPECIAL.search(text) is None
        and not any(map(unicodedata.combining, text))
    ):
        return Folded(text, None)
    pieces: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char.isascii():
            pieces.append(char)
            origin.append(index)
            continue
        if char in _INVISIBLE or unicodedata.combining(char):
            # Combining marks are dropped too: ``\w`` does not match them, so "jose\u0301@"
            # (an accent typed as a separate mark) would otherwise break the address.
            continue
        if char in _DASHES:
            folded = "-"
        elif char.isdecimal():
            folded = str(unicodedata.decimal(char))
        else:
            folded = unicodedata.normalize("NFKC", char)
            if char.isalnum() and not folded.isalnum():
                folded = char  # "ŀ" is "l·" under NFKC: a letter must stay one word character
            elif folded.isdecimal() and not folded.isascii():
                folded = "".join(str(unicodedata.decimal(c)) for c in folded)
        pieces.append(folded)
        origin.extend([index] * len(folded))
    return Folded("".join(pieces), origin)
