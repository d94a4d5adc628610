"""Hypothesis strategies for PII of every kind the scrubber handles, each in the disguises people
and systems give it (other scripts, full-width digits, zero-width splits, separators, case), and
the text put around it. Each strategy yields ``(text, secret)``: ``secret`` must not survive."""

from __future__ import annotations

import re

import phonenumbers
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb

_ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
_FULL_WIDTH = {ord(d): chr(0xFF10 + int(d)) for d in "0123456789"}
_ARABIC_INDIC = {ord(d): chr(0x0660 + int(d)) for d in "0123456789"}
_DEVANAGARI = {ord(d): chr(0x0966 + int(d)) for d in "0123456789"}
_DIGIT_SCRIPTS = [_FULL_WIDTH, _ARABIC_INDIC, _DEVANAGARI]


@st.composite
def disguised(draw: st.DrawFn, plain: str) -> str:
    """``plain`` as written, or with other-script digits, or split by a zero-width character."""
    how = draw(st.sampled_from(["plain", "plain", "digits", "zero-width", "full-width"]))
    if how == "digits":
        return plain.translate(draw(st.sampled_from(_DIGIT_SCRIPTS)))
    if how == "full-width":
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in plain)
    if how == "zero-width" and len(plain) > 1:
        at = draw(st.integers(1, len(plain) - 1))
        return plain[:at] + draw(st.sampled_from(_ZERO_WIDTH)) + plain[at:]
    return plain


# ---- email ---------------------------------------------------------------------------------

_UNICODE_LOCAL = st.text(
    st.characters(categories=["Ll", "Lu", "Lo"], max_codepoint=0x9FFF), min_size=1, max_size=10
)
_UNICODE_DOMAIN = st.text(
    st.characters(categories=["Ll", "Lo"], max_codepoint=0x9FFF), min_size=2, max_size=10
)


@st.composite
def emails(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(["plain", "unicode", "quoted", "obfuscated"]))
    if kind == "plain":
        address = draw(st.emails().filter(lambda e: len(e) < 80))
    elif kind == "unicode":
        tld = draw(st.sampled_from(["com", "de", "рф", "中国", "org"]))
        address = f"{draw(_UNICODE_LOCAL)}@{draw(_UNICODE_DOMAIN)}.{tld}"
    elif kind == "quoted":
        inner = draw(st.text("abcdefgh XYZ.,@", min_size=1, max_size=12).filter(str.strip))
        address = f'"{inner}"@{draw(st.sampled_from(["example.com", "mail.co.uk"]))}'
    else:
        local = draw(st.text("abcdefghij", min_size=2, max_size=8))
        at = draw(st.sampled_from([" [at] ", "(at)", " {at} ", "%40", "&#64;", "＠"]))
        dot = draw(st.sampled_from([".", " [dot] ", "(dot)"]))
        address = f"{local}{at}example{dot}com"
        return address, address
    written = draw(disguised(address)) if kind != "quoted" else address
    return written, written


# ---- phone ---------------------------------------------------------------------------------

_REGIONS = (
    "US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "ZA", "NG", "MX", "ES", "IT", "SE", "CN",
    "KR", "RU", "NL", "CH", "PL", "EG", "AR", "CA", "IE", "SG",
)  # fmt: skip
_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
_EXAMPLE_NUMBERS = [
    number
    for region in _REGIONS
    for kind in _TYPES
    if (number := phonenumbers.example_number_for_type(region, kind)) is not None
]
_FORMATS = (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164)


@st.composite
def phones(draw: st.DrawFn) -> tuple[str, str]:
    number = draw(st.sampled_from(_EXAMPLE_NUMBERS))
    text = str(phonenumbers.format_number(number, draw(st.sampled_from(_FORMATS))))
    style = draw(st.sampled_from(["as is", "00", "dots", "dashes", "national"]))
    if style == "00":
        text = "00" + text[1:]
    elif style in ("dots", "dashes"):
        text = text.replace(" ", "." if style == "dots" else "-")
    elif style == "national" and number.country_code in (1, 44, 49, 33, 61, 91):
        text = str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    written = draw(disguised(text))
    return written, written


# ---- card, SSN -----------------------------------------------------------------------------


@st.composite
def cards(draw: st.DrawFn) -> tuple[str, str]:
    prefix = draw(st.sampled_from(["4", "51", "55", "2221", "37", "34", "6011", "65", "35", "36"]))
    length = 15 if prefix in ("37", "34") else 14 if prefix == "36" else 16
    rest = draw(st.text("0123456789", min_size=length - len(prefix) - 1,
                        max_size=length - len(prefix) - 1))  # fmt: skip
    digits = prefix + rest + luhn.calc_check_digit(prefix + rest)
    separator = draw(st.sampled_from(["", " ", "-", ".", " - ", "  ", "_"]))
    text = separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    written = draw(disguised(text))
    return written, written


@st.composite
def ssns(draw: st.DrawFn) -> tuple[str, str]:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    separator = draw(st.sampled_from(["-", " ", "", ".", " - "]))
    text = f"{area:03d}{separator}{group:02d}{separator}{serial:04d}"
    written = draw(disguised(text))
    return written, written


# ---- IBAN ----------------------------------------------------------------------------------


def _iban_formats() -> list[tuple[str, list[tuple[int, str]]]]:
    formats = []
    for _, country, _, info, _ in numdb.get("iban").prefixes:
        parts = [(int(n), t) for n, t in re.findall(r"(\d+)!([nac])", str(info.get("bban", "")))]
        if parts:
            formats.append((str(country), parts))
    return formats


_IBAN_FORMATS = _iban_formats()
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CHARS = {"n": "0123456789", "a": _UPPER, "c": "0123456789" + _UPPER}


@st.composite
def ibans(draw: st.DrawFn) -> tuple[str, str]:
    country, parts = draw(st.sampled_from(_IBAN_FORMATS))
    bban = "".join(draw(st.text(_CHARS[t], min_size=n, max_size=n)) for n, t in parts)
    compact = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
    if not stdnum_iban.is_valid(compact):  # a country rule beyond the format (rare)
        compact = "DE89370400440532013000"
    separator = draw(st.sampled_from(["", " ", "-", ".", " "]))
    text = separator.join(compact[i : i + 4] for i in range(0, len(compact), 4))
    if draw(st.booleans()):
        text = text.lower()
    written = draw(disguised(text))
    return written, written


# ---- IP ------------------------------------------------------------------------------------

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(lambda ip: (str(ip), str(ip)))

# ---- secrets -------------------------------------------------------------------------------

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0234567"
_B64 = _ALNUM + "+/"
_B64URL = _ALNUM + "_-"


def _text(alphabet: str, size: int, most: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=size, max_size=most or size)


def _pair(token: str) -> tuple[str, str]:
    return token, token


_mixed40 = _text(_B64, 40).filter(
    lambda t: any(c.isupper() for c in t) and any(c.islower() for c in t)
    and any(c.isdigit() for c in t)
)  # fmt: skip
_password = st.text(_ALNUM + "!#$%&*+-?_", min_size=6, max_size=20).filter(
    lambda t: any(not c.isalpha() for c in t)
)
_pem_kind = st.sampled_from(
    ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
     "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK", "PGP PUBLIC KEY BLOCK", "PGP MESSAGE"]
)  # fmt: skip


@st.composite
def armoured(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(_pem_kind)
    body = "\n".join(draw(st.lists(_text(_B64, 64), min_size=1, max_size=3)))
    block = f"-----BEGIN {kind}-----\n{body}"
    if draw(st.booleans()):
        block += f"\n-----END {kind}-----"
    return block, body.split("\n")[0]


@st.composite
def jwts(draw: st.DrawFn) -> tuple[str, str]:
    header = "eyJ" + draw(_text(_B64URL, 10, 30))
    payload = "eyJ" + draw(_text(_B64URL, 10, 60))
    signature = draw(st.one_of(st.just(""), _text(_B64URL, 20, 43)))
    token = f"{header}.{payload}.{signature}"
    return token, payload


secrets = st.one_of(
    _text(_ALNUM, 20, 48).map(lambda t: _pair("sk-" + t)),
    _text(_ALNUM, 24, 40).map(lambda t: _pair("sk-proj-" + t)),
    _text(_UPPER_DIGITS, 16).map(lambda t: _pair("AKIA" + t)),
    _mixed40.map(_pair),
    _mixed40.map(lambda t: ("aws_secret_access_key = " + t, t)),
    _text(_ALNUM, 36).map(lambda t: _pair("ghp_" + t)),
    _text(_ALNUM, 24, 40).map(lambda t: _pair("xoxb-" + t)),
    _text(_ALNUM, 24, 30).map(lambda t: _pair("sk_live_" + t)),
    _text(_B64URL, 35).map(lambda t: _pair("AIza" + t)),
    _text(_ALNUM, 34).map(lambda t: _pair("hf_" + t)),
    _text(_ALNUM, 20, 30).map(lambda t: ("Authorization: Bearer " + t, t)),
    _password.map(lambda p: ("my password is " + p, p)),
    _password.map(lambda p: ("Password: " + p, p)),
    _password.map(lambda p: (f'password="{p}"', p)),
    _text("0123456789", 4, 6).map(lambda p: ("my PIN is " + p, p)),
    jwts(),
    armoured(),
)

pii = st.one_of(emails(), phones(), cards(), ssns(), ibans(), ips, secrets)

# ---- surroundings --------------------------------------------------------------------------

_MARKUP = ["<b>", "</b>", "<p>", "</td><td>", "**", "`", "```\n", "[", "](", ")", "&nbsp;", "> "]
_SEPARATORS = [" ", "\n", "\t", " (", ") ", " <b>", "</b> ", ' "', '" ', ", ", "; ", " [", "] ",
               " <", "> ", " `", "` ", "\n\n", " **", "** ", "\u00a0", "\u3000"]  # fmt: skip
# Neighbouring text: letters of many scripts, digits, punctuation and markup.
_WORDS = st.text(st.characters(categories=["L", "Nd", "P", "Zs"], exclude_characters="@＠﹫"),
                 max_size=12)  # fmt: skip
neighbours = st.lists(
    st.one_of(_WORDS, st.sampled_from(_MARKUP), _text("0123456789", 1, 4),
              _text("abcdefghijklmnopqrstuvwxyzABCXYZ", 1, 8)),
    max_size=4,
).map("".join)  # fmt: skip
separators = st.sampled_from(_SEPARATORS)
