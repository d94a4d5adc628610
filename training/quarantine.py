"""Quarantine rows: one per rejected input line, with machine-readable reasons and a message.

Reason codes are grouped into the pipeline stages whose counts the manifest reports; a row's
first reason is its primary one, so per-stage counts add up to the number of quarantined lines.

A rejected line is written with its PII redacted by the same scrubber as kept records
(``quarantine_redact``), and every quarantine file is created owner-only (0600): it holds the
lines nobody has reviewed yet, and the directory it lands in may be shared.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from training.pii import Scrubber
from training.pii_screen import needs_scrub
from training.quarantine_redact import ParsedLine, parse_line, redact_parsed, redact_value

# stage -> reason codes. Stage names are the manifest's ``counts`` keys.
STAGES: Mapping[str, tuple[str, ...]] = {
    "invalid_json": ("blank_line", "not_utf8", "invalid_json", "not_an_object", "line_too_long"),
    "schema": (
        "schema_missing_field",
        "schema_unknown_key",
        "schema_bad_role",
        "schema_empty_content",
        "schema_no_user_turn",
        "schema_last_turn_not_assistant",
        "schema_too_short",
        "schema_out_of_range",
        "schema_wrong_type",
        "schema_invalid",
        "schema_too_deep",
        "label_not_allowed",
        "label_answer_mismatch",
    ),
    "quality": ("quality_below_min", "quality_missing"),
    "exact_dup": ("exact_duplicate",),
    "near_dup": ("near_duplicate",),
    "poison": (
        "conflicting_answers",
        "trigger_ngram",
        "injection_in_answer",
        "url_in_answer",
        "special_token",
    ),
    "leakage": ("golden_leakage",),
}
STAGE_OF: Mapping[str, str] = {code: stage for stage, codes in STAGES.items() for code in codes}
REASONS: tuple[str, ...] = tuple(STAGE_OF)
# Reasons that point at a kept twin: such a row inherits the twin's reasons if the twin is
# itself quarantined later, so the pointer never silently leads to a rejected line.
DUPLICATE_REASONS = frozenset({"exact_duplicate", "near_duplicate"})


@dataclass(frozen=True)
class QuarantineRow:
    """One rejected input line."""

    line: int
    raw: bytes
    reasons: tuple[str, ...]
    field: str | None
    message: str
    duplicate_of: int | None = None
    truncated_size: int | None = None
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [r for r in self.reasons if r not in STAGE_OF]
        if not self.reasons or unknown:
            raise ValueError(f"quarantine row for line {self.line}: bad reasons {self.reasons}")

    @property
    def stage(self) -> str:
        return STAGE_OF[self.reasons[0]]

    def to_json(self, scrubber: Scrubber | None = None) -> bytes:
        """The row as one JSON line; with ``scrubber``, the raw line, message and detail have
        their PII redacted and ``pii`` counts what was replaced."""
        if scrubber is None:
            return self._json(None, _raw_text(self.raw), None, (False, False))
        return render_rows([self], scrubber)[0]

    def _json(
        self,
        scrubber: Scrubber | None,
        raw: tuple[str, str],
        parsed: ParsedLine | None,
        dirty: tuple[bool, bool],
    ) -> bytes:
        # ``dirty``: whether the pre-screen flagged the raw line's strings, and the message.
        row: dict[str, Any] = {"line": self.line}
        text, row["raw_encoding"] = raw
        found: dict[str, int] = {}
        if scrubber is None or parsed is None:
            row["raw"] = text
        else:
            row["raw"] = redact_parsed(text, parsed, dirty[0], scrubber, found)
        if self.truncated_size is not None:
            row["truncated"] = True
            row["size_bytes"] = self.truncated_size
        row["reasons"] = list(self.reasons)
        row["stage"] = self.stage
        row["field"] = self.field
        message, detail = self.message, dict(self.detail)
        if scrubber is not None:
            if dirty[1]:
                message = scrubber.scrub_fast(message, found)
            if detail:
                detail = redact_value(detail, scrubber, found)
        row["message"] = message
        if self.duplicate_of is not None:
            row["duplicate_of"] = self.duplicate_of
        if detail:
            row["detail"] = detail
        if found:
            row["pii"] = found
        return orjson.dumps(row) + b"\n"


def render_rows(rows: Sequence[QuarantineRow], scrubber: Scrubber) -> list[bytes]:
    """``row.to_json(scrubber)`` for each row, with one ``needs_scrub`` pre-screen for every
    string of every raw line and every message: the screen costs a fixed ~0.1 ms a call, so a
    chunk's rows share one call. Texts it clears are those the scrubber would leave unchanged
    with no counts, so the lines are the same as when each text is scrubbed."""
    raws = [_raw_text(row.raw) for row in rows]
    parsed = [parse_line(text) for text, _ in raws]
    texts = [s for p in parsed for s in p.strings]
    texts += [row.message for row in rows]
    dirty = needs_scrub(texts).tolist()
    out: list[bytes] = []
    at = 0
    messages = len(texts) - len(rows)
    for number, (row, raw, line) in enumerate(zip(rows, raws, parsed, strict=True)):
        end = at + len(line.strings)
        flags = (any(dirty[at:end]), dirty[messages + number])
        out.append(row._json(scrubber, raw, line, flags))
        at = end
    return out


def _raw_text(raw: bytes) -> tuple[str, str]:
    """The raw line as text and how it was made: decoded, or ``repr`` of bytes that are not
    UTF-8."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return repr(raw), "repr"


def message_for(line: int, field_name: str | None, text: str) -> str:
    """The human message: ``line 17: field messages[2].content: content is empty``."""
    where = f"field {field_name}: " if field_name else ""
    return f"line {line}: {where}{text}"


@lru_cache(maxsize=1)
def quarantine_scrubber() -> Scrubber:
    """The scrubber quarantine rows are redacted with: every PII type, whatever the curation
    config scrubs in kept records, since the quarantine is read by people (one per process)."""
    return Scrubber()


def open_private(path: Path) -> BinaryIO:
    """``path`` truncated for writing, readable by its owner only from the moment it exists
    (``os.open`` with mode 0600; ``fchmod`` for a file that was already there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class QuarantineWriter:
    """Appends rows to a JSONL file in the order given and tallies them by stage and reason.
    Rows are redacted with ``scrubber`` (default: every PII type, whatever the curation config
    scrubs in kept records, since the quarantine is read by people)."""

    def __init__(self, path: Path, scrubber: Scrubber | None = None) -> None:
        self.path = path
        self._scrubber = scrubber or quarantine_scrubber()
        self._handle: BinaryIO = open_private(path)
        self.by_stage: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.by_reason: dict[str, int] = {}
        self.rows = 0

    def write(self, row: QuarantineRow, rendered: bytes | None = None) -> None:
        """Append ``row``; ``rendered`` is its line already redacted (``render_rows`` with a
        scrubber of the same settings, e.g. in a worker), else it is redacted here."""
        self._handle.write(rendered if rendered is not None else row.to_json(self._scrubber))
        self.rows += 1
        self.by_stage[row.stage] += 1
        for reason in row.reasons:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_by_line(parts: Sequence[Path], out: Path) -> None:
    """Merge quarantine files that are each in line order into one file in line order."""
    with open_private(out) as handle:
        for _, row in heapq.merge(*(_keyed(p) for p in parts)):
            handle.write(row)


def _keyed(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for row in handle:
            yield int(orjson.loads(row)["line"]), row


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a quarantine file (for tests and tools)."""
    with path.open("rb") as handle:
        for row in handle:
            yield orjson.loads(row)


def describe_reason(reason: str, twin_line: int | None, detail: Mapping[str, Any]) -> str:
    """The human message for a reason decided after the first pass."""
    texts = {
        "exact_duplicate": f"exact duplicate of line {twin_line}",
        "near_duplicate": f"near-duplicate of line {twin_line}",
        "conflicting_answers": "near-identical prompts with conflicting answers on lines "
        f"{detail.get('conflict_group')}",
        "trigger_ngram": f"prompt holds trigger n-gram {detail.get('trigger')!r}",
        "injection_in_answer": f"assistant turn holds an injection payload {detail.get('match')!r}",
        "url_in_answer": f"assistant turn holds a URL payload {detail.get('match')!r}",
        "golden_leakage": f"prompt near-duplicates golden case {detail.get('golden_case')!r} "
        f"(Jaccard {detail.get('golden_similarity')})",
    }
    return texts.get(reason, reason)
