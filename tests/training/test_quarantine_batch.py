"""Batch redaction of quarantine rows (``render_rows``, one pre-screen per chunk, run in the
workers) writes exactly the lines that scrubbing every string of every row one by one writes."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pii_strategies import pii

from training.pii import Scrubber
from training.quarantine import QuarantineRow, quarantine_scrubber, render_rows
from training.quarantine_redact import MAX_DEPTH, redact_line, redact_value

_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\"\\/bfnrt]))")
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(match: re.Match[str]) -> str:
    code, simple = match.groups()
    if simple is not None:
        return _SIMPLE[simple]
    char = chr(int(code, 16))
    return match.group(0) if 0xD800 <= ord(char) <= 0xDFFF else char


def _depth(value: Any) -> int:
    """How deep the deepest value inside ``value`` lies (an empty container adds nothing)."""
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, (dict, list)) and items:
        return 1 + max(map(_depth, items))
    return 0


def _slow_raw(raw: str, scrubber: Scrubber, found: dict[str, int]) -> str:
    """Every string scrubbed, no screen: what redaction must amount to."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return scrubber.scrub_fast(_ESCAPE.sub(_unescape, raw), found)
    if _depth(value) > MAX_DEPTH:
        return scrubber.scrub_fast(_ESCAPE.sub(_unescape, raw), found)
    here: dict[str, int] = {}
    cleaned = redact_value(value, scrubber, here)
    if not here:
        return raw
    for kind, number in here.items():
        found[kind] = found.get(kind, 0) + number
    return orjson.dumps(cleaned).decode("utf-8")


def _slow_json(row: QuarantineRow, scrubber: Scrubber) -> bytes:
    out: dict[str, Any] = {"line": row.line}
    try:
        raw = row.raw.decode("utf-8")
        out["raw_encoding"] = "utf-8"
    except UnicodeDecodeError:
        raw = repr(row.raw)
        out["raw_encoding"] = "repr"
    found: dict[str, int] = {}
    out["raw"] = _slow_raw(raw, scrubber, found)
    if row.truncated_size is not None:
        out["truncated"] = True
        out["size_bytes"] = row.truncated_size
    out["reasons"] = list(row.reasons)
    out["stage"] = row.stage
    out["field"] = row.field
    out["message"] = scrubber.scrub_fast(row.message, found)
    detail = redact_value(dict(row.detail), scrubber, found)
    if row.duplicate_of is not None:
        out["duplicate_of"] = row.duplicate_of
    if detail:
        out["detail"] = detail
    if found:
        out["pii"] = found
    return orjson.dumps(out) + b"\n"


_PROSE = st.sampled_from(["Where is order NW-12345?", "my password reset never came", "ok", ""])
_TEXT = st.lists(st.one_of(_PROSE, pii.map(lambda pair: pair[0])), max_size=3).map(" ".join)
_LEAF = st.one_of(_TEXT, st.integers(-(10**12), 10**12), st.none(), st.booleans())
_VALUE = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _raw_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "record", "cut", "bytes", "deep"]))
    if kind == "record":
        turns = [{"role": "customer", "content": draw(_TEXT)}]
        return json.dumps({"messages": turns, "metadata": {"n": draw(_VALUE)}}).encode()
    value = draw(_VALUE)
    if kind == "deep":
        for _ in range(MAX_DEPTH + draw(st.integers(-1, 1))):
            value = [value]
    data = json.dumps(value, ensure_ascii=draw(st.booleans())).encode()
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "bytes":
        return data + b"\xff"
    return data


@st.composite
def _rows(draw: st.DrawFn) -> QuarantineRow:
    line = draw(st.integers(1, 10**6))
    detail = draw(st.dictionaries(st.sampled_from(["match", "trigger"]), _TEXT, max_size=1))
    message = f"line {line}: {draw(_TEXT)}"
    reason = draw(st.sampled_from(["invalid_json", "schema_bad_role", "exact_duplicate"]))
    return QuarantineRow(line, draw(_raw_lines()), (reason,), None, message, detail=detail)


@settings(max_examples=300, deadline=None)
@given(st.lists(_rows(), max_size=6))
def test_batch_render_matches_scrubbing_every_string(rows: list[QuarantineRow]) -> None:
    """``render_rows`` gives, row for row, the line of a redaction that scrubs every string of
    the raw line, the message and the detail without any pre-screen."""
    assert render_rows(rows, quarantine_scrubber()) == [_slow_json(row, Scrubber()) for row in rows]


@settings(max_examples=200, deadline=None)
@given(_raw_lines())
def test_redact_line_matches_scrubbing_every_string(raw: bytes) -> None:
    """``redact_line`` (one screen per line) agrees with scrubbing every string too."""
    text = raw.decode("utf-8", "replace")
    found: dict[str, int] = {}
    slow: dict[str, int] = {}
    assert redact_line(text, quarantine_scrubber(), found) == _slow_raw(text, Scrubber(), slow)
    assert found == slow
