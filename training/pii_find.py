"""Finders for each PII type: each takes the folded text (``pii_text.fold``) and returns the
spans it is sure of, as ``(start, end)`` pairs in that text.

Detection is candidate-then-verify: a regex proposes a run and a checksum or parser confirms it
(Luhn via ``stdnum.luhn``, mod-97 via ``stdnum.iban``, SSN area/group rules via
``stdnum.us.ssn``, ``phonenumbers`` for phones, ``ipaddress`` for IPs), so order numbers and
versions that only look like PII survive. Digit-bearing runs are split into groups at their
separators and, when the whole run fails, the leftmost longest run of whole groups that passes is
taken, then the rest is searched again: a card or phone next to other digits ("ref 7 4111 1111
1111 1111", "+44 7400 123456 0") is still found. Secret shapes follow the token formats their
issuers document (the shapes detect-secrets and gitleaks match).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum import numdb
from stdnum.us import ssn as _ssn

Span = tuple[int, int]

# ---- secrets -------------------------------------------------------------------------------

# An armoured block (PEM private keys, PGP key blocks and messages) up to its END line, or, when
# the text was cut before it, through the base64 body and header lines that follow.
_BLOCK = re.compile(
    r"-{3,}BEGIN[ A-Z0-9]{0,40}?(?:PRIVATE KEY|PGP[ A-Z]{0,30}|KEY BLOCK|ENCRYPTED[ A-Z]{0,30})"
    r"[ A-Z]{0,30}-{3,}"
    r"(?:.*?-{3,}\s*END[ A-Z0-9]{0,60}-{3,}|[A-Za-z0-9+/=:,.\s\\-]*)",
    re.DOTALL | re.IGNORECASE,
)
# Shapes with a distinctive prefix are matched even when glued to a word ("keyAKIA...").
_TOKENS = re.compile(
    r"(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposre]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|ya29\.[0-9A-Za-z_-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|whsec_[A-Za-z0-9]{20,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|pypi-[A-Za-z0-9_-]{50,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
    r"|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"
    r"|dop_v1_[a-f0-9]{64}"
    # JWTs, signed or not (alg "none" leaves the third part empty), and five-part JWEs.
    r"|ey[A-Za-z0-9_-]{8,}\.ey[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,3}"
    # Base64 DER key bodies (PKCS#1/#8 start "MII"), OpenSSH key bodies.
    r"|MII[A-Za-z0-9+/]{60,}={0,2}"
    r"|b3BlbnNzaC1rZXktdjE[A-Za-z0-9+/=]{20,}"
)
# OpenAI/Anthropic keys: "sk-" and 20+ characters; taken when standing alone, or, glued to a
# word, when the tail mixes cases and digits (so "risk-management-..." survives).
_SK = re.compile(r"sk-(?:proj-|ant-|live-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")
# Cloud secret keys without a prefix: AWS secret access keys (40 base64 characters) and Azure
# storage keys (88 with "=="), taken when they mix upper, lower and digits.
_CLOUD = re.compile(
    r"(?<![A-Za-z0-9/+])(?:[A-Za-z0-9/+]{40}|[A-Za-z0-9/+]{86}==)(?![A-Za-z0-9/+=])"
)
_VALUE = r"(?!<[A-Z]+>)(?P<val>[^\s\"'`<>,;\x00]{%d,})"
_QUOTED = r"(?P<q>[\"'`])(?!<[A-Z]+>(?P=q))(?P<qval>(?:(?!(?P=q))[^\n\x00]){1,80})(?P=q)"
# "Bearer X", "Authorization: Basic X".
_BEARER = re.compile(
    r"(?i:\bbearer\s+|\bauthorization\s*[:=]\s*(?:(?:basic|token|digest)\s+)?)" + _VALUE % 8
)
# "password: X", "api_key = X", "AccountKey=X;": after ':' or '=' the value is the credential.
_ASSIGN = re.compile(
    r"(?i:(?P<pw>pass(?:word|wd|code|phrase)|pwd)|key|token|secret|auth|credentials?)"
    r"[A-Za-z0-9_-]{0,30}[\"']?\s*[:=]\s*[\"']?" + (_VALUE % 4)
)
# "my password is X", "PIN 1234", "cvv: 123": the word after is the credential when it looks
# like one (a digit, a symbol or a capital) or is quoted; PINs and card codes are digits.
_STATED = re.compile(
    r"(?i:\b(?P<kw>pass(?:word|wd|code|phrase)|pwd|pin(?:\s+(?:number|code))?|cvv2?|cvc2?|csc))"
    r"(?P<conn>\s+(?:is|was|=|:)(?=\s)|\s*[:=#])?\s*"
    r"(?:" + _QUOTED + r"|(?!<[A-Z]+>)(?P<val>[^\s\x00]{1,64}))"
)
# Words after "password is" that say something about it rather than being it.
_NOT_A_PASSWORD = frozenset(
    """not no wrong incorrect invalid expired blocked locked too very a an the being still correct
    right safe secure weak strong long short required needed forgotten lost stolen compromised
    reset changed same different working accepted rejected set now also always never just only
    all in on at for to of and or but so that this it what how why when where which who mine
    yours empty blank hidden encrypted stored saved sent over under about like changing expiring
    showing asking case sensitive protected asked requested updated entered typed shown there
    here ok okay fine good bad old new my your his her their our its incorrectly""".split()  # noqa: SIM905 (a word list reads better as prose)
)


def find_secrets(work: str) -> list[Span]:
    spans = [m.span() for m in _BLOCK.finditer(work)]
    spans += [m.span() for m in _TOKENS.finditer(work)]
    spans += [m.span() for m in _SK.finditer(work) if _sk_ok(work, m)]
    spans += [m.span() for m in _CLOUD.finditer(work) if _mixed(m.group(0))]
    return spans


def find_keyword_secrets(work: str) -> list[Span]:
    spans = [m.span("val") for m in _BEARER.finditer(work)]
    for m in _ASSIGN.finditer(work):
        if m.group("pw") or len(m.group("val")) >= 8:
            spans.append(m.span("val"))
    for m in _STATED.finditer(work):
        digits_only = m.group("kw").lower().startswith(("pin", "cv", "csc"))
        if m.group("qval") is not None:
            if m.group("conn"):
                spans.append(m.span("qval"))
            continue
        value = m.group("val").rstrip(".,;:!?)]}\"'")
        start = m.start("val")
        if digits_only:
            code = re.match(r"[0-9]{3,8}(?![0-9A-Za-z])", value)
            if code:
                spans.append((start, start + code.end()))
        elif m.group("conn") and value and _looks_like_password(value):
            spans.append((start, start + len(value)))
    return spans


def _looks_like_password(value: str) -> bool:
    if value.lower() in _NOT_A_PASSWORD or value.startswith("<"):
        return False
    if value.isalpha() and value.islower() and value.endswith(("ed", "ing", "ly")):
        return False  # "denied", "expiring", "silently": a word about the password
    return len(value) >= 4 or any(not c.isalpha() for c in value)


def _sk_ok(work: str, match: re.Match[str]) -> bool:
    start = match.start()
    if start == 0 or not (work[start - 1].isalnum() or work[start - 1] in "_-"):
        return True
    return _mixed(match.group(0)[3:])


def _mixed(token: str) -> bool:
    return (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )


# ---- email ---------------------------------------------------------------------------------

_AT = r"(?:@|%40|&#0*64;|&#x0*40;|&commat;|\s*[\[({<](?i:at)[\])}>]\s*)"
_DOT = r"(?:\.|\s*[\[({<](?i:dot)[\])}>]\s*)"
_ATOM = r"[\w!#$%&'*+/=?^`{|}~-]+"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_EMAIL = re.compile(
    r"(?:\"[^\"\r\n\x00]{1,64}\"|" + _ATOM + r"(?:\." + _ATOM + r")*)" + _AT
    + r"(?:\[[0-9A-Fa-f:.]{2,45}\]|(?:" + _LABEL + _DOT + r")+[^\W\d_](?:[\w-]{0,61}[^\W_])?)"
)  # fmt: skip
# "jane at example dot com": only with a common top-level domain, to spare "meet at noon".
_SPELLED = re.compile(
    r"(?i)(?<![\w.])[\w.+-]{1,64}\s+at\s+(?:[^\W_][\w-]{0,62}\s+dot\s+)+"
    r"(?:com|net|org|edu|gov|io|co|uk|de|fr|es|it|nl|info|biz|me|us|ca|au|in|jp|ru|br)\b"
)


def find_emails(work: str) -> list[Span]:
    return [m.span() for m in _EMAIL.finditer(work)]


def find_spelled_emails(work: str) -> list[Span]:
    return [m.span() for m in _SPELLED.finditer(work)]


# ---- IP addresses --------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}"
    r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?:%[A-Za-z0-9._]{1,16})?(?![0-9A-Za-z:])"
)


def find_ipv4(work: str) -> list[Span]:
    return [m.span() for m in _IPV4.finditer(work) if _parses(ipaddress.IPv4Address, m[0])]


def find_ipv6(work: str) -> list[Span]:
    return [m.span() for m in _IPV6.finditer(work) if _parses(ipaddress.IPv6Address, m[0])]


def _parses(kind: Callable[[str], object], candidate: str) -> bool:
    try:
        kind(candidate)
    except ValueError:
        return False
    return True


# ---- IBAN ----------------------------------------------------------------------------------

IBAN_START = re.compile(r"(?<![0-9])[A-Za-z]{2}[0-9]{2}")
_IBAN_SEPARATORS = " .-_\t"


def _iban_lengths() -> dict[str, int]:
    """Country -> IBAN length, from the registry ``stdnum.iban`` validates against."""
    lengths: dict[str, int] = {}
    for _, country, _, info, _ in numdb.get("iban").prefixes:
        parts = re.findall(r"(\d+)!", str(info.get("bban", "")))
        if parts:
            lengths[str(country)] = 4 + sum(map(int, parts))
    return lengths


_IBAN_LENGTH = _iban_lengths()


def find_ibans(work: str) -> list[Span]:
    """Each country's IBAN has one length, so from a start ("GB82", any case) exactly that many
    letters and digits are read across separators: an IBAN glued to the next word or followed by
    more groups is still cut at the right place."""
    spans: list[Span] = []
    taken = 0
    for match in IBAN_START.finditer(work):
        start = match.start()
        length = _IBAN_LENGTH.get(work[start : start + 2].upper())
        if start < taken or length is None:
            continue
        chars: list[str] = []
        at = start
        gap = 0
        while at < len(work) and len(chars) < length:
            char = work[at]
            if char.isascii() and char.isalnum():
                chars.append(char)
                gap = 0
            elif char in _IBAN_SEPARATORS and gap < 3 and chars:
                gap += 1
            else:
                break
            at += 1
        if len(chars) == length and _iban.is_valid("".join(chars).upper()):
            spans.append((start, at))
            taken = at
    return spans


# ---- SSN, card, phone ----------------------------------------------------------------------

_SSN = re.compile(r"(?<![0-9])[0-9]{3}([ .\-_]{0,3})[0-9]{2}\1[0-9]{4}(?![0-9])")
_CARD_RUN = re.compile(r"(?<![0-9+])[0-9]+(?:[ .\-_\t]{1,3}[0-9]+)*")
_PHONE_RUN = re.compile(r"(?<![0-9])(?:\+\s?|\()?[0-9](?:[0-9]|[ .\-/()\t]{1,3}\+?(?=[0-9]))*\)?")
_DIGIT_GROUP = re.compile(r"\+?[0-9]+")


def find_ssns(work: str) -> list[Span]:
    return [m.span() for m in _SSN.finditer(work) if _ssn.is_valid(re.sub(r"\D", "", m[0]))]


def find_cards(work: str) -> list[Span]:
    spans: list[Span] = []
    for run in _CARD_RUN.finditer(work):
        spans += _windows(work, run, 13, 19, _is_card)
    return spans


def find_phones(work: str, regions: tuple[str, ...]) -> list[Span]:
    spans: list[Span] = []
    for run in _PHONE_RUN.finditer(work):
        spans += _windows(work, run, 7, 17, lambda text: _is_phone(text, regions))
    return spans


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    # Issuer numbers start 2-6; a run starting 0/1/7-9 is an order or reference number.
    return digits[0] in "23456" and bool(_luhn.is_valid(digits))


# Dates read as phone numbers in many plans ("2026-10-14 09" is a valid US number).
_DATE = re.compile(
    r"(?:19|20)[0-9]{2}([-/.])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12][0-9]|3[01])(?![0-9])"
    r"|(?<![0-9])(?:0?[1-9]|[12][0-9]|3[01])([-/.])(?:0?[1-9]|[12][0-9]|3[01])\2(?:19|20)[0-9]{2}"
)


def _is_phone(candidate: str, regions: tuple[str, ...]) -> bool:
    if _DATE.search(candidate):
        return False
    text = candidate.strip("()")
    if text.startswith("00"):
        text = "+" + text[2:]  # the IDD most of the world dials; the region decides the rest
    tries: Iterable[str] = regions[:1]
    if text.startswith("0") and "+" not in text:
        tries = regions  # a trunk "0": a national number of one of the configured regions
    for region in tries:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _windows(
    work: str, run: re.Match[str], least: int, most: int, verify: Callable[[str], bool]
) -> list[Span]:
    """The leftmost longest runs of whole digit groups in ``run`` whose digit count lies in
    ``[least, most]`` and that ``verify`` accepts, searching again after each one found."""
    base = run.start()
    text = run.group(0)
    groups = [g.span() for g in _DIGIT_GROUP.finditer(text)]
    sizes = [end - start - (text[start] == "+") for start, end in groups]
    total = sum(sizes)
    if total < least:
        return []
    if total <= most and verify(text):
        return [run.span()]
    spans: list[Span] = []
    first = 0
    while first < len(groups):
        count = 0
        last = first
        while last < len(groups) and count + sizes[last] <= most:
            count += sizes[last]
            last += 1
        found = None
        while last > first and count >= least:
            start, end = groups[first][0], groups[last - 1][1]
            start -= start > 0 and text[start - 1] == "("
            end += end < len(text) and text[end] == ")"
            if verify(text[start:end]):
                found = (base + start, base + end)
                break
            last -= 1
            count -= sizes[last]
        if found is None:
            first += 1
        else:
            spans.append(found)
            first = last
    return spans
