"""Redaction of quarantine rows: a rejected line is kept for diagnosis, its PII is not.

A line that parses as JSON has every string in it (keys too) scrubbed and is written back
compactly, so PII behind a JSON escape (``\\u0040``, ``\\n`` glued to a number) is seen as the
reader of the line would see it. Anything else (invalid JSON, truncated or non-UTF-8 lines) has
its JSON string escapes decoded and is scrubbed as text. Reasons, line numbers and field names
are never touched; the message and the detail values are scrubbed too, since both may quote the
line.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from training.pii import Scrubber
from training.pii_screen import needs_scrub

_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\"\\/bfnrt]))")
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


# Deeper lines (quarantined for their depth) are redacted as text: walking them would recurse
# past Python's limit.
MAX_DEPTH = 64


class _TooDeep(Exception):
    pass


class ParsedLine(NamedTuple):
    """A rejected line ready for redaction: its JSON ``value`` and every string in it (keys
    too), or, when it is not JSON (``value`` is ``_TEXT``), its one unescaped text."""

    value: Any
    strings: list[str]
    long_number: bool


_TEXT = object()


def parse_line(raw: str) -> ParsedLine:
    """What ``redact_parsed`` needs of ``raw``; ``strings`` are what the pre-screen reads."""
    try:
        value = orjson.loads(raw)
        strings: list[str] = []
        has_long_number = _collect(value, strings, 0)
    except (orjson.JSONDecodeError, _TooDeep):
        return ParsedLine(_TEXT, [_ESCAPE.sub(_unescape, raw)], False)
    return ParsedLine(value, strings, has_long_number)


def redact_parsed(
    raw: str, parsed: ParsedLine, dirty: bool, scrubber: Scrubber, counts: dict[str, int]
) -> str:
    """``redact_line`` given ``parse_line(raw)`` and whether ``needs_scrub`` flagged any of its
    strings (``dirty``): a clean line is returned without running the scrubber, which by the
    screen's contract would change nothing."""
    if parsed.value is _TEXT:
        text = parsed.strings[0]
        return scrubber.scrub_fast(text, counts) if dirty else text
    # Most rejected lines hold no PII: the pre-screen of their strings clears them.
    if not parsed.long_number and not dirty:
        return raw
    found: dict[str, int] = {}
    cleaned = redact_value(parsed.value, scrubber, found)
    if not found:
        return raw  # nothing to hide: keep the line byte for byte
    for kind, number in found.items():
        counts[kind] = counts.get(kind, 0) + number
    return orjson.dumps(cleaned).decode("utf-8")


def redact_line(raw: str, scrubber: Scrubber, counts: dict[str, int]) -> str:
    """The rejected line with its PII replaced, adding what was found to ``counts``."""
    parsed = parse_line(raw)
    return redact_parsed(raw, parsed, bool(needs_scrub(parsed.strings).any()), scrubber, counts)


def redact_value(value: Any, scrubber: Scrubber, counts: dict[str, int]) -> Any:
    """``value`` with every string in it (mapping keys included) scrubbed; no deeper than
    ``MAX_DEPTH`` (checked by ``redact_line``, and small for detail mappings)."""
    if isinstance(value, str):
        return scrubber.scrub_fast(value, counts)
    if isinstance(value, dict):
        return {
            scrubber.scrub_fast(str(k), counts): redact_value(v, scrubber, counts)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_value(v, scrubber, counts) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        # A phone or card number written as a JSON number.
        text = str(value)
        scrubbed = scrubber.scrub_fast(text, counts)
        return value if scrubbed == text else scrubbed
    return value


def _collect(value: Any, strings: list[str], depth: int) -> bool:
    """Append every string in ``value`` (keys too) to ``strings``; True when it holds an
    integer long enough to be a phone or card number, which the screen does not see. Exact type
    tests: ``value`` comes from ``orjson.loads``, which builds no subclasses."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    kind = type(value)
    if kind is str:
        strings.append(value)
        return False
    if kind is dict:
        strings.extend(value)
        items = value.values()
    elif kind is list:
        items = value
    else:
        return kind is int and abs(value) >= 10**6
    if depth >= MAX_DEPTH and items:
        raise _TooDeep  # its items, whatever they are, lie past the limit
    long_number = False
    for item in items:
        # Strings, the usual leaves, are taken here without a call.
        if type(item) is str:
            strings.append(item)
        elif _collect(item, strings, depth + 1):
            long_number = True
    return long_number


def _unescape(match: re.Match[str]) -> str:
    code, simple = match.groups()
    if simple is not None:
        return _SIMPLE[simple]
    char = chr(int(code, 16))
    # A lone surrogate cannot be written as UTF-8; keep the escape as it was.
    return match.group(0) if 0xD800 <= ord(char) <= 0xDFFF else char
