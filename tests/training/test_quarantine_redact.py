"""Quarantine files hold no raw PII and are owner-only: rejected lines are redacted by the
scrubber (reason, line, field and message kept), and every quarantine file is created 0600."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from training.curate import curate
from training.curate_config import CurateConfig, SchemaConfig
from training.quarantine import QuarantineRow, QuarantineWriter, merge_by_line, read_rows

CARD, EMAIL, PHONE = "4111 1111 1111 1111", "jane.doe@example.com", "+44 7400 123456"
CLOUD = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
IBAN = "GB82 WEST 1234 5698 7654 32"
VALUES = (CARD, EMAIL, PHONE, CLOUD, IBAN)
TEXT = f"card {CARD}, mail {EMAIL}, key {CLOUD}, call {PHONE}, iban {IBAN}"


def _row(raw: bytes, reason: str = "schema_bad_role", line: int = 3) -> QuarantineRow:
    return QuarantineRow(line, raw, (reason,), "messages[0].role", f"line {line}: bad {TEXT}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, *rows: QuarantineRow) -> list[dict[str, object]]:
    with QuarantineWriter(path) as writer:
        for row in rows:
            writer.write(row)
    return list(read_rows(path))


def test_json_line_is_redacted_and_keeps_its_reason(tmp_path: Path) -> None:
    """A rejected JSON line keeps line, reason, stage and field; its PII, in content, metadata
    and message, is replaced by placeholders and counted."""
    raw = json.dumps(
        {"messages": [{"role": "customer", "content": TEXT}], "metadata": {"tel": PHONE}}
    )
    [row] = _write(tmp_path / "q.jsonl", _row(raw.encode()))
    dumped = json.dumps(row, ensure_ascii=False)
    assert not [value for value in VALUES if value in dumped]
    assert (row["line"], row["reasons"], row["stage"]) == (3, ["schema_bad_role"], "schema")
    assert row["field"] == "messages[0].role"
    assert str(row["message"]).startswith("line 3: bad card <CARD>")
    assert json.loads(str(row["raw"]))["messages"][0]["role"] == "customer"
    assert row["pii"] == {"card": 2, "email": 2, "secret": 2, "phone": 3, "iban": 2}


def test_invalid_json_and_escaped_pii_are_redacted(tmp_path: Path) -> None:
    """Lines that are not JSON, or hide PII behind JSON escapes, are redacted as text."""
    broken = (
        '{"messages": [{"content": "mail jane.doe\\u0040example.com\\ncall ' + PHONE + '"'
    ).encode()
    undecodable = b"\xff card " + CARD.encode()
    rows = _write(
        tmp_path / "q.jsonl", _row(broken, "invalid_json", 1), _row(undecodable, "not_utf8", 2)
    )
    dumped = json.dumps(rows, ensure_ascii=False)
    assert not [value for value in (*VALUES, "jane.doe") if value in dumped]
    assert [row["reasons"] for row in rows] == [["invalid_json"], ["not_utf8"]]
    assert rows[1]["raw_encoding"] == "repr"


def test_clean_line_is_kept_byte_for_byte(tmp_path: Path) -> None:
    """A rejected line without PII is written exactly as it was read, with no ``pii`` key."""
    raw = '{"messages":  [{"role": "customer", "content": "where is my parcel?"}]}'
    row = QuarantineRow(4, raw.encode(), ("schema_bad_role",), None, "line 4: bad role")
    [written] = _write(tmp_path / "q.jsonl", row)
    assert written["raw"] == raw and "pii" not in written


def test_quarantine_files_are_owner_only(tmp_path: Path) -> None:
    """Writer and merge create 0600 files, even under a permissive umask and over an existing
    world-readable file."""
    old = os.umask(0)
    try:
        early, late, out = tmp_path / "early", tmp_path / "late", tmp_path / "out"
        late.write_bytes(b"")
        late.chmod(0o644)
        _write(early, _row(b"{}", line=1))
        _write(late, _row(b"{}", line=2))
        merge_by_line([early, late], out)
    finally:
        os.umask(old)
    assert [_mode(p) for p in (early, late, out)] == [0o600, 0o600, 0o600]
    assert [row["line"] for row in read_rows(out)] == [1, 2]


@pytest.mark.parametrize("workers", [1, 2])
def test_curated_quarantine_holds_no_pii_and_is_private(tmp_path: Path, workers: int) -> None:
    """End to end: lines rejected at read time and later (a duplicate) carry no PII in the
    quarantine file, which is 0600, and keep their reasons."""
    system = {"role": "system", "content": "Route the ticket. Reply with the label only."}

    def record(user: str, role: str = "user") -> bytes:
        messages = [
            system,
            {"role": role, "content": user},
            {"role": "assistant", "content": "billing"},
        ]
        return json.dumps(
            {"messages": messages, "metadata": {"label": "billing", "quality_score": 0.9}}
        ).encode()

    good = [
        f"My invoice {n} shows the wrong VAT amount for the desk chair number {n}."
        for n in "ABCDEFGH"
    ]
    lines = [record(u) for u in good]
    lines += [record(TEXT, role="customer"), b"not json " + TEXT.encode(), lines[0]]
    src = tmp_path / "raw.jsonl"
    src.write_bytes(b"\n".join(lines))
    config = replace(CurateConfig(), schema=SchemaConfig(labels=("billing",)))
    config = replace(config, read=replace(config.read, workers=workers))
    curate(src, tmp_path / "out", config, allow_empty=True)
    path = tmp_path / "out" / "quarantine.jsonl"
    text = path.read_text(encoding="utf-8")
    assert not [value for value in VALUES if value in text]
    reasons = {row["line"]: row["reasons"][0] for row in read_rows(path)}
    assert reasons[9] == "schema_bad_role" and reasons[10] == "invalid_json"
    assert reasons[11] == "exact_duplicate"
    assert _mode(path) == 0o600


def test_line_too_deep_to_walk_is_redacted_as_text(tmp_path: Path) -> None:
    """A line nested deeper than a walk can go (990 levels) is still redacted, as text."""
    raw = '{"deep": ' + "[" * 990 + json.dumps(TEXT) + "]" * 990 + "}"
    [row] = _write(tmp_path / "q.jsonl", _row(raw.encode(), "schema_invalid"))
    assert not [value for value in VALUES if value in str(row["raw"])]
    assert row["reasons"] == ["schema_invalid"]
