"""Batch pre-screen for PII scrubbing: which texts could ``Scrubber`` change at all.

``Scrubber._scrub_once`` already skips patterns behind cheap guards (a split, ten counts, a
substring test, one regex search), but on a slow 2-core machine those guards alone cost tens of
microseconds per text, nearly all of it per-call overhead. ``needs_scrub`` evaluates the same
guards for a whole curation chunk at once: the ASCII texts are joined into one byte array, a few
whole-array passes find the characters and letter pairs the guards look for, and everything else
is checked only at those positions.

A text is reported clean only when no guard in ``_scrub_once`` fires, or, for IPv4 and the
digit-run guard, when the pattern behind it provably cannot match; the default scrubber then
returns it unchanged with no counts. Texts with any non-ASCII character are always flagged, which
keeps Unicode whitespace, case folding and digits out of the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from training.pii import DIGIT_GUARD, SECRET_MIN_TOKEN

Codes = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Positions = npt.NDArray[np.intp]

# A newline is whitespace for the long-word test and outside every character class below, so no
# guard can match across two texts. Padding on both sides lets the checks look a few characters
# before or after any position in a text without bounds tests.
_SEPARATOR = "\n"
_PAD = 16

# Mirrors of the guards in ``training.pii`` (see ``Scrubber._scrub_once``).
# ``_IPV4`` needs three "digit.digit" joints, which prices ("12.50") and versions ("1.2.3") lack;
# the scrubber's own guard (any digit before a dot) would flag every price.
_IPV4_JOINTS = 3
# Substring guards, lower-cased, each with the offset of one of its rarer letter pairs: only where
# that pair occurs is the whole word compared. The private-key header is matched ignoring case,
# which only flags more. (word, pair offset, whether it flags a text on its own)
_WORDS = (
    (b"-----begin", 4, True),
    (b"bearer", 0, True),
    (b"key", 1, False),
    (b"token", 1, False),
    (b"passw", 3, False),
)


def _table(members: bytes | list[int]) -> Mask:
    table = np.zeros(256, dtype=np.bool_)
    table[list(members)] = True
    return table


_DIGIT = _table(b"0123456789")
# ``_DIGIT_RUN`` is [0-9][0-9 ().\-/]{5,}[0-9]: a digit followed by at least six of these.
_RUN = _table(b"0123456789 ().-/")
_RUN_OFFSETS = np.arange(1, 7)
# Above 32 no ASCII character is whitespace to ``str.split``; below it, these are not either, and
# a text holding one is simply flagged rather than taught to the long-word test.
_ALONE = _table([c for c in range(32) if not chr(c).isspace()] + [ord("@")])
# The words as a padded grid, and which word each anchoring pair (first byte * 256 + second)
# belongs to.
_WORD_PAIRS = [(word[at], word[at + 1]) for word, at, _ in _WORDS]
_WORD_OF_PAIR = np.zeros(1 << 16, dtype=np.uint8)
_WORD_OF_PAIR[[one << 8 | two for one, two in _WORD_PAIRS]] = np.arange(len(_WORDS))
_WORD_WIDTH = max(len(word) for word, _, _ in _WORDS)
_WORD_GRID = np.array([list(word.ljust(_WORD_WIDTH, b"\0")) for word, _, _ in _WORDS], np.uint8)
_WORD_BEYOND = np.array([[i >= len(word) for i in range(_WORD_WIDTH)] for word, _, _ in _WORDS])
_WORD_AT = np.array([at for _, at, _ in _WORDS])
_WORD_ALONE = np.array([alone for _, _, alone in _WORDS])
_WORD_COLUMNS = np.arange(_WORD_WIDTH)


def needs_scrub(texts: Sequence[str]) -> Mask:
    """For each text, False only when the default ``Scrubber`` is certain to leave it unchanged
    with no counts; True means "run the scrubber" (it may still find nothing)."""
    flagged = np.zeros(len(texts), dtype=np.bool_)
    padding = _SEPARATOR * _PAD
    joined = _SEPARATOR.join([padding, *texts, padding])
    if not joined.isascii():  # O(1): CPython records whether a string is ASCII
        ascii_texts = [text.isascii() for text in texts]
        flagged = ~np.array(ascii_texts, dtype=np.bool_)
        texts = [text if ok else "" for text, ok in zip(texts, ascii_texts, strict=True)]
        joined = _SEPARATOR.join([padding, *texts, padding])
    codes: Codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    # The separator after text i sits at ends[i], so searchsorted maps a position to its text.
    ends = np.cumsum(lengths + 1) + _PAD

    # Every whole-array pass writes into one workspace. A fresh temporary per pass gets new pages
    # from the kernel on most calls (glibc hands freed memory back), and faulting those in cost
    # more than all the passes; one allocation of a steady size is reused from the heap instead.
    workspace = np.empty((4, len(codes)), dtype=np.uint8)
    scratch: Codes = workspace[0]
    first, second, third = (row.view(np.bool_) for row in workspace[1:])

    # '@' (email) and the control characters ``str.split`` keeps inside words (0-8, 14-27) flag
    # a text outright; digits, ':' and '=' are counted or looked around below (';' and '<' come
    # along in the range and are ignored). uint8 wraps below a range's start, so each range test
    # is one subtraction and one comparison.
    np.less_equal(np.subtract(codes, ord("0"), out=scratch), ord("=") - ord("0"), out=first)
    first |= np.equal(codes, ord("@"), out=second)
    first |= np.less(codes, 9, out=second)
    first |= np.less(np.subtract(codes, 14, out=scratch), 28 - 14, out=second)
    where = np.flatnonzero(first)
    what = codes[where]
    whose = np.searchsorted(ends, where)
    alone = [whose[_ALONE[what]]]

    # A word of SECRET_MIN_TOKEN or more characters: every fixed secret shape is that long.
    words = _runs(np.greater(codes, 32, out=first), second, SECRET_MIN_TOKEN)
    alone.append(np.searchsorted(ends, np.flatnonzero(words)))

    # Bit 0x20 folds A-Z onto a-z and maps nothing else onto a letter, so comparing folded bytes
    # with a lower-case word is the scrubber's ``word in text.lower()`` for ASCII.
    folded = np.bitwise_or(codes, np.uint8(0x20), out=scratch)
    anchored = third[:-1]
    anchored[:] = False
    for one, two in _WORD_PAIRS:
        pair = np.equal(folded[:-1], one, out=first[:-1])
        pair &= np.equal(folded[1:], two, out=second[:-1])
        anchored |= pair
    anchors = np.flatnonzero(anchored)
    word = _WORD_OF_PAIR[folded[anchors].astype(np.uint16) << 8 | folded[anchors + 1]]
    starts = anchors - _WORD_AT[word]
    window = folded[starts[:, np.newaxis] + _WORD_COLUMNS]
    matched = ((window == _WORD_GRID[word]) | _WORD_BEYOND[word]).all(axis=1)
    found = np.searchsorted(ends, starts[matched])
    alone.append(found[_WORD_ALONE[word[matched]]])
    flagged[np.concatenate(alone)] = True

    def per_text(owners: Positions) -> npt.NDArray[np.intp]:
        return np.bincount(owners, minlength=len(texts))

    colons = per_text(whose[what == ord(":")])
    flagged |= colons >= 2  # IPv6
    # "passw", "key" and "token" count only in a text that also holds a ':' or '='.
    keyword = found[~_WORD_ALONE[word[matched]]]
    if len(keyword):
        assigns = per_text(whose[what == ord("=")])
        flagged[keyword[(colons[keyword] > 0) | (assigns[keyword] > 0)]] = True

    digit = _DIGIT[what]
    digit_owners = whose[digit]
    digits = where[digit]
    joints = (codes[digits + 1] == ord(".")) & _DIGIT[codes[digits + 2]]  # IPv4
    flagged |= per_text(digit_owners[joints]) >= _IPV4_JOINTS
    # IBAN, SSN, card and phone: at least seven digits in the text and a digit run.
    guarded = per_text(digit_owners)[digit_owners] >= DIGIT_GUARD
    run_starts = digits[guarded]
    runs = _RUN[codes[run_starts[:, np.newaxis] + _RUN_OFFSETS]].all(axis=1)
    flagged[digit_owners[guarded][runs]] = True
    return flagged


def _runs(mask: Mask, spare: Mask, length: int) -> Mask:
    """Where ``mask[i : i + length]`` is all True, for the first ``len(mask) - length + 1`` i,
    by doubling the covered width; ``mask`` and ``spare`` are overwritten, the result is a view
    into one of them."""
    size = len(mask)
    covered = 1
    while covered < length:
        step = min(covered, length - covered)
        np.logical_and(mask[: size - step], mask[step:size], out=spare[: size - step])
        mask, spare = spare, mask
        size -= step
        covered += step
    return mask[:size]
