"""Batch pre-screen for PII scrubbing: which texts could ``Scrubber`` change at all.

``Scrubber._find`` already skips patterns behind cheap guards (a split, ten counts, a
substring test, one regex search), but on a slow 2-core machine those guards alone cost tens of
microseconds per text, nearly all of it per-call overhead. ``needs_scrub`` evaluates the same
guards for a whole curation chunk at once: the ASCII texts are joined into one byte array, a few
whole-array passes find the characters and letter pairs the guards look for, and everything else
is checked only at those positions.

A text is reported clean only when no guard in ``Scrubber._find`` fires, or, for IPv4, IPv6, the
long-word, password-word and digit-run guards, when the patterns behind it provably cannot match
(their shapes are spelled out where each is checked); the default scrubber then returns it
unchanged with no counts. ``tests/training/test_pii_screen.py`` pins the verdicts to the same
conditions written out per text, and checks with hypothesis that cleared texts are left alone.
Texts with any non-ASCII character are always flagged, which keeps Unicode whitespace, case
folding and digits out of the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from training.pii import (
    ALONE_WORDS,
    ASSIGN_WORDS,
    CODE_WORDS,
    DIGIT_GUARD,
    MIN_DIGITS_FOR_CODES,
    PASSWORD_CONNECTOR,
    PASSWORD_WORDS,
    RUN_CHARS,
    SECRET_MIN_TOKEN,
)

Codes = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Positions = npt.NDArray[np.intp]

# A newline is whitespace for the long-word test and outside every character class below, so no
# guard can match across two texts. Padding on both sides lets the checks look a few characters
# before or after any position in a text without bounds tests.
_SEPARATOR = "\n"
_PAD = 16

# Mirrors of the guards in ``training.pii`` (see ``Scrubber._find``).
# ``_IPV4`` needs three "digit.digit" joints, which prices ("12.50") and versions ("1.2.3") lack;
# the scrubber's own guard (any digit before a dot) would flag every price.
_IPV4_JOINTS = 3
# What a guard word needs besides itself: nothing, a ':' or '=' in the text, some digits, or a
# match of ``PASSWORD_CONNECTOR`` (looked for, with ``re``, only in texts nothing else flags).
_ALONE, _ASSIGN, _CODE, _STATED = 0, 1, 2, 3


def _fold(word: str) -> bytes:
    # The screen compares bytes with bit 0x20 set (A-Z onto a-z; it also folds '[' onto '{',
    # '@' onto '`' and '\r' onto '-', which only flags more texts).
    return bytes(b | 0x20 for b in word.encode("ascii"))


def _guard_words() -> tuple[tuple[bytes, int, int], ...]:
    """(folded word, offset of its anchoring letter pair, what it needs), one entry per folded
    word, each anchored on a pair no other word uses, so a pair names its word."""
    chosen: dict[bytes, int] = {}
    alone = tuple(word for word in ALONE_WORDS if word not in PASSWORD_WORDS)
    groups = ((alone, _ALONE), (ASSIGN_WORDS, _ASSIGN), (CODE_WORDS, _CODE))
    for words, need in (*groups, (PASSWORD_WORDS, _STATED)):
        for word in map(_fold, words):
            chosen[word] = min(chosen.get(word, need), need)
    taken: set[bytes] = set()
    table = []
    for word, need in chosen.items():
        free = [i for i in range(len(word) - 1) if word[i : i + 2] not in taken]
        # Every occurrence of the anchoring pair costs a word comparison: take the rarest.
        at = min(free, key=lambda i: _PAIR_RANK.get(word[i : i + 2], -1))
        taken.add(word[at : at + 2])
        table.append((word, at, need))
    return tuple(table)


# Letter pairs of English text, most frequent first (from published bigram tables); a pair not
# listed (any with a digit or punctuation) counts as rarer than all of them. Only the speed of
# the screen depends on this.
_COMMON_PAIRS_TEXT = (
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve "
    "co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns di fo ho pe ec pr no "
    "ct us ac ot il tr ly nc et ut ss so rs un lo wa ge ie wh ee wi em ad ol rt po we na ul ni ts "
    "mo ow pa im mi ai sh ir su id os iv ia am fi ci vi pl ig tu ev ld ry mp fe bl ab gh ty op wo "
    "sa ay ex ke fr oo av ag if ap gr od bo sp rd do uc bu ei ov by rm ep tt oc fa ef cu rn sc gi "
    "da yo cr cl du ga qu ue ff ba ey ls va um pp ua up lu go ht ru ug ds lt pi rc rr eg au ck ew "
    "mu br bi pt ak pu ui rg ib tl ny ki rk ys ob mm fu ph og ms ye ud mb ip ub oi rl gu dr hr cc "
    "tw ft wn nu af hu nn eo vo rv nf xp gn sm fl iz ok nl my gl aw ju oa eq sy sl ps jo lf nv je"
)
_COMMON_PAIRS = _COMMON_PAIRS_TEXT.split()
_PAIR_RANK = {
    pair.encode("ascii"): len(_COMMON_PAIRS) - rank for rank, pair in enumerate(_COMMON_PAIRS)
}


_WORDS = _guard_words()


def _table(members: bytes | list[int]) -> Mask:
    table = np.zeros(256, dtype=np.bool_)
    table[list(members)] = True
    return table


_DIGIT = _table(b"0123456789")
_LETTER = _table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# ``_DIGIT_RUN`` is a digit followed by at least six of ``RUN_CHARS``.
_RUN = _table(RUN_CHARS.encode("ascii"))
_RUN_OFFSETS = np.arange(1, 7)
_HEX = _table(b"0123456789ABCDEFabcdef")
_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_DASHED = _table(_ALNUM + b"_-")
_SECRET_BASE64 = _table(_ALNUM + b"+/=")
_TOKEN_OFFSETS = np.arange(SECRET_MIN_TOKEN)
_HEX_REACH = 4
_HEX_OFFSETS = np.arange(_HEX_REACH)
# Above 32 no ASCII character is whitespace to ``str.split``; below it, these are not either, and
# a text holding one is simply flagged rather than taught to the long-word test.
_ALONE_CHARS = _table([c for c in range(32) if not chr(c).isspace()] + [ord("@")])
# The words as a padded grid, and which word each anchoring pair (first byte * 256 + second)
# belongs to.
_WORD_PAIRS = [(word[at], word[at + 1]) for word, at, _ in _WORDS]
_WORD_OF_PAIR = np.zeros(1 << 16, dtype=np.uint8)
_WORD_OF_PAIR[[one << 8 | two for one, two in _WORD_PAIRS]] = np.arange(len(_WORDS))
_IS_ANCHOR = np.zeros(1 << 16, dtype=np.bool_)
_IS_ANCHOR[[one << 8 | two for one, two in _WORD_PAIRS]] = True
_WORD_WIDTH = max(len(word) for word, _, _ in _WORDS)
_WORD_GRID = np.array([list(word.ljust(_WORD_WIDTH, b"\0")) for word, _, _ in _WORDS], np.uint8)
_WORD_BEYOND = np.array([[i >= len(word) for i in range(_WORD_WIDTH)] for word, _, _ in _WORDS])
_WORD_AT = np.array([at for _, at, _ in _WORDS])
_WORD_NEED = np.array([need for _, _, need in _WORDS])
_WORD_COLUMNS = np.arange(_WORD_WIDTH)
_WORD_REACH = max(_WORD_WIDTH, 4, SECRET_MIN_TOKEN)
assert _PAD > _WORD_REACH


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
    workspace = np.empty((3, len(codes)), dtype=np.uint8)
    scratch: Codes = workspace[0]
    first, second = (row.view(np.bool_) for row in workspace[1:])

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
    alone = [whose[_ALONE_CHARS[what]]]

    # Every shape ``pii_find.find_secrets`` looks for (an armoured block needs "-begin") holds
    # SECRET_MIN_TOKEN or more characters in a row of one of two classes, letters and digits
    # with "_-" (``_TOKENS``, ``_SK``) or with "+/=" (DER and OpenSSH bodies, ``_CLOUD``), or is
    # a JWT (".ey"). The scrubber's own guard, any word that long, also fires on dotted field
    # paths ("metadata.quality_score:", named by many quarantine messages) and URLs.
    letters = np.subtract(np.bitwise_or(codes, np.uint8(0x20), out=scratch), ord("a"), out=scratch)
    # Runs of either class are found as runs of both together, then told apart by position.
    tokens = np.less_equal(letters, ord("z") - ord("a"), out=first)
    tokens |= np.less(np.subtract(codes, ord("0"), out=scratch), 10, out=second)
    for char in b"_-+/=":
        tokens |= np.equal(codes, char, out=second)
    long_at = np.flatnonzero(_runs(tokens, second, SECRET_MIN_TOKEN))
    window = codes[long_at[:, np.newaxis] + _TOKEN_OFFSETS]
    shaped = _SECRET_DASHED[window].all(axis=1) | _SECRET_BASE64[window].all(axis=1)
    alone.append(np.searchsorted(ends, long_at[shaped]))
    dots = np.flatnonzero(np.equal(codes, ord("."), out=first))
    jwt = ((codes[dots + 1] | 0x20) == ord("e")) & ((codes[dots + 2] | 0x20) == ord("y"))
    alone.append(np.searchsorted(ends, dots[jwt]))

    # Bit 0x20 folds A-Z onto a-z and maps nothing else onto a letter, so comparing folded bytes
    # with a lower-case word is the scrubber's ``word in text.lower()`` for ASCII.
    folded = np.bitwise_or(codes, np.uint8(0x20), out=scratch)
    # One gather finds every anchoring pair: the pair codes index a 65,536-entry table.
    pairs = folded[:-1].astype(np.uint16)
    pairs <<= 8
    pairs |= folded[1:]
    anchored = _IS_ANCHOR[pairs]
    anchors = np.flatnonzero(anchored)
    word = _WORD_OF_PAIR[folded[anchors].astype(np.uint16) << 8 | folded[anchors + 1]]
    starts = anchors - _WORD_AT[word]
    window = folded[starts[:, np.newaxis] + _WORD_COLUMNS]
    matched = ((window == _WORD_GRID[word]) | _WORD_BEYOND[word]).all(axis=1)
    found = np.searchsorted(ends, starts[matched])
    need = _WORD_NEED[word[matched]]
    alone.append(found[need == _ALONE])

    flagged[np.concatenate(alone)] = True

    def per_text(owners: Positions) -> npt.NDArray[np.intp]:
        return np.bincount(owners, minlength=len(texts))

    is_colon = what == ord(":")
    colons = per_text(whose[is_colon])
    # IPv6: ``_IPV6`` (looked for by the scrubber in any text with two colons) needs two colons
    # with at most four hex digits between them; "line 7: field x: ..." has none.
    colon_at = where[is_colon]
    gap = np.diff(colon_at) - 1
    close = np.flatnonzero(gap <= _HEX_REACH)
    between = codes[(colon_at[close] + 1)[:, np.newaxis] + _HEX_OFFSETS]
    hex_only = (_HEX[between] | (gap[close][:, np.newaxis] <= _HEX_OFFSETS)).all(axis=1)
    flagged[whose[is_colon][close[hex_only]]] = True
    # "key", "token", ... count only in a text that also holds a ':' or '='.
    keyword = found[need == _ASSIGN]
    if len(keyword):
        assigns = per_text(whose[what == ord("=")])
        flagged[keyword[(colons[keyword] > 0) | (assigns[keyword] > 0)]] = True

    digit = _DIGIT[what]
    digit_owners = whose[digit]
    digits = where[digit]
    # IBAN: two ASCII letters, then two digits, not after a digit ("GB82", "gb82"); looked
    # for around each digit only.
    lldd = _DIGIT[codes[digits + 1]] & _LETTER[codes[digits - 1]] & _LETTER[codes[digits - 2]]
    lldd &= ~_DIGIT[codes[digits - 3]]
    flagged[digit_owners[lldd]] = True
    digit_counts = per_text(digit_owners)
    # "pin", "cvv", ... count only beside a few digits.
    code = found[need == _CODE]
    flagged[code[digit_counts[code] >= MIN_DIGITS_FOR_CODES]] = True
    joints = (codes[digits + 1] == ord(".")) & _DIGIT[codes[digits + 2]]  # IPv4
    flagged |= per_text(digit_owners[joints]) >= _IPV4_JOINTS
    # SSN, card and phone: at least seven digits in the text and a digit run.
    guarded = digit_counts[digit_owners] >= DIGIT_GUARD
    run_starts = digits[guarded]
    runs = _RUN[codes[run_starts[:, np.newaxis] + _RUN_OFFSETS]].all(axis=1)
    flagged[digit_owners[guarded][runs]] = True
    # A password word with no connector in its text: rare after the passes above, so ``re``.
    for owner in np.unique(found[need == _STATED]).tolist():
        if not flagged[owner] and PASSWORD_CONNECTOR.search(texts[owner]) is not None:
            flagged[owner] = True
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
