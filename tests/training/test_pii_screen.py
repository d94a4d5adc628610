"""PII pre-screen: a text it clears is one the scrubber leaves alone, its verdicts match the
scrubber's guards written out plainly, and batching never changes a verdict."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn

from training.pii import (
    ALONE_WORDS,
    ASSIGN_WORDS,
    CODE_WORDS,
    MIN_DIGITS_FOR_CODES,
    PASSWORD_WORDS,
    SECRET_MIN_TOKEN,
    scrub_text,
)
from training.pii_screen import needs_scrub

PROSE = "Where is my order NW-12345? The kettle was due Monday."


@pytest.mark.parametrize(
    "value",
    [
        "jane.doe@example.com",
        "+44 20 7946 0018",
        "4111 1111 1111 1111",
        "GB82 WEST 1234 5698 7654 32",
        "192.168.1.20",
        "fe80::1",
        "123-45-6789",
        "sk-proj-abcdefghijklmnopqrstuvwxyz",
        "Bearer abcdefgh12345",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
        "password: hunter2hunter2",
    ],
)
def test_each_pii_kind_in_prose_is_flagged(value: str) -> None:
    """Every kind the scrubber replaces, embedded in ordinary prose, is sent to the scrubber."""
    assert scrub_text(f"{PROSE} {value} Thanks.").counts  # the example really is PII
    assert needs_scrub([f"{PROSE} {value} Thanks."]).tolist() == [True]


@pytest.mark.parametrize(
    "text",
    [
        PROSE,
        "Can I pay for the rug in instalments? It costs 23.50 pounds, order NW-12345.",
        "The courier came at 10:30 on 12/03 but I was out. Version 1.2.3 of the app crashes.",
        "My key broke and the token machine ate my card, order NW-99031.",
        "",
        " \t\n\x1c ",
    ],
)
def test_ordinary_prose_is_cleared(text: str) -> None:
    """Order numbers, prices, times and short dates do not send a text to the scrubber."""
    assert needs_scrub([text]).tolist() == [False]


def test_non_ascii_texts_are_flagged_and_batches_may_be_empty() -> None:
    """Any non-ASCII character flags its text (and only its text); an empty batch is fine."""
    assert needs_scrub(["naïve question", PROSE]).tolist() == [True, False]
    assert needs_scrub([]).tolist() == []


# ---- generated texts ------------------------------------------------------------------------

_REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "AU")
_PHONES = [
    phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    for region in _REGIONS
    if (number := phonenumbers.example_number(region)) is not None
]


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["4", "51", "6011"]))
    body = (prefix + draw(st.text("0123456789", min_size=15, max_size=15)))[:15]
    digits = body + luhn.calc_check_digit(body)
    return draw(st.sampled_from(["", " ", "-"])).join(digits[i : i + 4] for i in range(0, 16, 4))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    bban = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4))
    bban += draw(st.text("0123456789", min_size=14, max_size=14))
    compact = "GB" + stdnum_iban.calc_check_digits("GB00" + bban) + bban
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


_TOKEN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_SSN = "{:03d}-{:02d}-{:04d}".format
pii_values = st.one_of(
    st.emails().filter(lambda e: len(e) < 60),
    st.sampled_from(_PHONES),
    cards(),
    ibans(),
    st.builds(_SSN, st.integers(1, 899), st.integers(1, 99), st.integers(1, 9999)),
    st.ip_addresses().map(str),
    st.text(_TOKEN, min_size=20, max_size=30).map(lambda t: "sk-" + t),
    st.text(_TOKEN, min_size=8, max_size=20).map(lambda t: "Bearer " + t),
)
# Pieces that sit on either side of some guard: the characters and words it looks for, digit
# runs of every length, words around the secret-token minimum, and whitespace str.split() does
# and does not split on. Plain prose and digit runs are drawn more often so that many texts
# stay clean.
_PROSE = st.text(st.sampled_from("abcdefgh XYZ,?!'"), max_size=12)
_DIGIT_RUNS = st.text(st.sampled_from("0123456789 ().-/"), max_size=12)
fragments = st.one_of(
    _PROSE,
    _PROSE,
    _PROSE,
    _DIGIT_RUNS,
    _DIGIT_RUNS,
    st.text(st.sampled_from(_TOKEN), min_size=13, max_size=18),
    st.sampled_from(["@", ":", "=", ".", "\n", "\t", "\r", "\x0b", "\x1c", "\x1f", "\x00", "\x1b"]),
    st.sampled_from(["bearer", "BeArEr", "key", "KEY", "token", "Passw", "-----BEGIN", "-----"]),
    st.sampled_from(["password", "Passcode", "pwd", " is ", " was ", "\tIS\t", "#", "passwd is"]),
    st.sampled_from(["NW-12345", "10:30", "12.50", "1.2.3", "2024-01-15", "\r\r\r\r\rbegin"]),
    pii_values,
    st.text(max_size=6),
)
_PIECES = st.lists(fragments, max_size=8)
# Texts close to clean: prose with pieces just short of a guard (15-character words, a lone colon,
# "key" without one, two IPv4 joints, six-digit runs).
_NEAR_MISSES = st.lists(
    st.one_of(
        _PROSE,
        st.text(st.sampled_from("0123456789 ().-/"), max_size=7),
        st.text(st.sampled_from(_TOKEN), min_size=13, max_size=17),
        st.sampled_from([":", "=", ".", "key", "Token", "passw", "bear", "-----", "BEGIN", "\x1c"]),
        st.sampled_from(["password", "pwd", "is", "was", "password was", "Password\nis"]),
        st.sampled_from([": x:", "10:30", "ab:cdef:", "1:23456:", "::", "fe80:", "line 7: f:"]),
        st.text(st.sampled_from("aZ9_-+/=.,eEyY"), min_size=12, max_size=18),
        st.sampled_from(["NW-12345", "10:30", "12.50", "1.2.3", "12/03/24", "+44 20"]),
    ),
    max_size=6,
)
_NEAR = _NEAR_MISSES.map(" ".join)
texts = st.one_of(_PIECES.map("".join), _PIECES.map(" ".join), _NEAR, _NEAR)


def _guards(text: str) -> bool:
    """The scrubber's guards written out per text, with IPv4 and the digit run narrowed to what
    their patterns need; the screen should agree exactly."""
    if not text.isascii():
        return True
    # The screen folds case by setting bit 0x20, which also folds '[' onto '{', '\r' onto '-'
    # and other control characters onto punctuation: compare folded bytes as it does.
    folded = bytes(b | 0x20 for b in text.encode())
    digits = sum(map(text.count, "0123456789"))

    def has(words: tuple[str, ...]) -> bool:
        return any(bytes(b | 0x20 for b in w.encode()) in folded for w in words)

    return (
        "@" in text
        or any(not c.isspace() for c in text if ord(c) < 32)
        or re.search(rf"[A-Za-z0-9_\-]{{{SECRET_MIN_TOKEN}}}", text) is not None
        or re.search(rf"[A-Za-z0-9+/=]{{{SECRET_MIN_TOKEN}}}", text) is not None
        or re.search(r"\.[Ee][Yy]", text) is not None
        or has(tuple(w for w in ALONE_WORDS if w not in PASSWORD_WORDS))
        or (has(PASSWORD_WORDS) and _password_connector(text))
        or ((":" in text or "=" in text) and has(ASSIGN_WORDS))
        or (digits >= MIN_DIGITS_FOR_CODES and has(CODE_WORDS))
        or re.search(r":[0-9A-Fa-f]{0,4}:", text) is not None
        or len(re.findall(r"(?=[0-9]\.[0-9])", text)) >= 3
        or re.search(r"(?<![0-9])[A-Za-z]{2}[0-9]{2}", text) is not None
        or (digits >= 7 and re.search(r"[0-9][0-9 ().\-/_+\t]{6}", text) is not None)
    )


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("I cannot log in since Monday, my password reset email never comes.", False),
        ("Someone changed my password on Friday, I think my account was hacked.", False),
        ("my password is hunter2", True),
        ("the PWD was\tHunter2 yesterday", True),
        ("passcode#4455", True),
        ("password: see the vault", True),
    ],
)
def test_password_words_need_a_connector(text: str, flagged: bool) -> None:
    """A password word flags a text only with a connector its patterns need (':', '=', '#',
    "is"/"was"); without one the scrubber provably leaves the text alone."""
    assert needs_scrub([text]).tolist() == [flagged]
    if not flagged:
        assert scrub_text(text).text == text


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("line 17: field messages[0].role: 'customer' is not a role", False),
        ("line 3: invalid JSON: unexpected end of data: line 1 column 52", False),
        ("meet at 10:30:15", True),
        ("host fe80::1 is down", True),
        ("dead:beef: is not an address", True),
        ("line 9: field metadata.quality_score: 0.46 is below the minimum 0.8", False),
        ("see https://example.com/track/NW-12345/details", False),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", True),
        ("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
    ],
)
def test_colons_and_long_words_flag_only_pii_shapes(text: str, flagged: bool) -> None:
    """Two colons flag a text only with at most four hex digits between them (what ``_IPV6``
    needs), a long word only when it is a run a secret shape needs; so quarantine messages
    ("line 7: field metadata.quality_score: ...") and URLs are not sent to the scrubber."""
    assert needs_scrub([text]).tolist() == [flagged]
    if not flagged:
        assert scrub_text(text).text == text


def _password_connector(text: str) -> bool:
    # Written out: a ':', '=' or '#' anywhere, or a password word, whitespace, "is"/"was" and
    # whitespace (the connectors ``pii_find._STATED`` and ``_ASSIGN`` need).
    if any(c in text for c in ":=#"):
        return True
    lowered = text.lower()
    for word in ("password", "passwd", "passcode", "passphrase", "pwd"):
        at = lowered.find(word)
        while at >= 0:
            rest = lowered[at + len(word) :]
            gap = len(rest) - len(rest.lstrip())
            if gap and rest[gap:].startswith(("is", "was")):
                tail = rest[gap + (2 if rest[gap:].startswith("is") else 3) :]
                if tail[:1].isspace():
                    return True
            at = lowered.find(word, at + 1)
    return False


@settings(max_examples=1000, deadline=None)
@given(texts)
def test_cleared_texts_are_left_alone_by_the_scrubber(text: str) -> None:
    """Whenever the screen clears a text, scrubbing it changes nothing and counts nothing."""
    if not needs_scrub([text])[0]:
        result = scrub_text(text)
        assert result.text == text
        assert result.counts == {}


@settings(max_examples=1000, deadline=None)
@given(texts)
def test_verdicts_match_the_guards_written_out(text: str) -> None:
    """The vectorised screen flags exactly the texts the plain per-text guards flag."""
    assert bool(needs_scrub([text])[0]) == _guards(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(texts, st.just(""), st.text(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"))))
def test_batching_never_changes_a_verdict(batch: list[str]) -> None:
    """Neighbours in a batch (empty, whitespace-only, non-ASCII) never change a text's verdict."""
    assert needs_scrub(batch).tolist() == [bool(needs_scrub([text])[0]) for text in batch]
