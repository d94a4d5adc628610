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
from typing import Any

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


def redact_line(raw: str, scrubber: Scrubber, counts: dict[str, int]) -> str:
    """The rejected line with its PII replaced, adding what was found to ``counts``."""
    try:
        value = orjson.loads(raw)
        strings: list[str] = []
        has_long_number = _collect(value, strings, 0)
    except (orjson.JSONDecodeError, _TooDeep):
        return scrubber.scrub_fast(_ESCAPE.sub(_unescape, raw), counts)
    # Most rejected lines hold no PII: one batch pre-screen of their strings clears them.
    if not has_long_number and not needs_scrub(strings).any():
        return raw
    found: dict[str, int] = {}
    cleaned = redact_value(value, scrubber, found)
    if not found:
        return raw  # nothing to hide: keep the line byte for byte
    for kind, number in found.items():
        counts[kind] = counts.get(kind, 0) + number
    return orjson.dumps(cleaned).decode("utf-8")


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
    integer long enough to be a phone or card number, which the screen does not see."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    if isinstance(value, str):
        strings.append(value)
        return False
    if isinstance(value, dict):
        strings.extend(map(str, value))
        return any([_collect(v, strings, depth + 1) for v in value.values()])
    if isinstance(value, list):
        return any([_collect(v, strings, depth + 1) for v in value])
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**6


def _unescape(match: re.Match[str]) -> str:
    code, simple = match.groups()
    if simple is not None:
        return _SIMPLE[simple]
    char = chr(int(code, 16))
    # A lone surrogate cannot be written as UTF-8; keep the escape as it was.
    return match.group(0) if 0xD800 <= ord(char) <= 0xDFFF else char
