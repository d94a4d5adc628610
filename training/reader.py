"""Streaming, byte-level line reader for raw JSONL.

Lines are read as bytes, one at a time with a length cap, so neither a 10 GB file nor a single
10 GB line is ever held in memory; the input's sha256 is computed on the same pass. A UTF-8 BOM
on the first line is dropped. Decoding is left to the JSON parser, which validates UTF-8 itself,
so only lines it rejects pay for a second look.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from training.errors import DataError

BOM = b"\xef\xbb\xbf"
# How much of an over-long line is kept for its quarantine row.
PREVIEW_BYTES = 200
_SKIP_CHUNK = 1 << 20
_COPY_CHUNK = 1 << 20


class RawLine(NamedTuple):
    """One physical input line without its terminator. ``truncated`` lines exceeded the cap and
    ``data`` holds only their first ``PREVIEW_BYTES``; ``size`` is the full length in bytes.
    (A NamedTuple: one is built per input line, at a fifth of a frozen dataclass's cost.)"""

    number: int
    data: bytes
    size: int
    truncated: bool = False


class LineReader:
    """Iterate ``RawLine``s of a file; ``sha256`` and ``bytes_read`` are final after iteration."""

    def __init__(self, path: Path, *, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        if not path.exists():
            raise DataError(f"input file {path} does not exist")
        if not path.is_file():
            raise DataError(f"input {path} is not a regular file")
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.size = path.stat().st_size
        self.bytes_read = 0
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[RawLine]:
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise DataError(f"cannot read input file {self.path}: {exc.strerror}") from None
        with handle:
            yield from self._lines(handle)

    def _lines(self, handle: BinaryIO) -> Iterator[RawLine]:
        cap = self.max_line_bytes
        update = self._digest.update
        number = 0
        while True:
            # Room for the cap plus a CRLF terminator, so a line of exactly ``cap`` bytes is whole.
            chunk = handle.readline(cap + 2)
            if not chunk:
                return
            update(chunk)
            self.bytes_read += len(chunk)
            number += 1
            complete = chunk.endswith(b"\n") or len(chunk) < cap + 2
            if number == 1 and chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
            data = chunk.rstrip(b"\r\n")
            if complete and len(data) <= cap:
                yield RawLine(number, data, len(data))
                continue
            size = len(data) if complete else len(chunk) + self._skip_rest(handle)
            yield RawLine(number, data[:PREVIEW_BYTES], size, truncated=True)

    def _skip_rest(self, handle: BinaryIO) -> int:
        """Consume the remainder of an over-long line in bounded chunks; return its length."""
        skipped = 0
        while True:
            chunk = handle.readline(_SKIP_CHUNK)
            if not chunk:
                return skipped
            self._digest.update(chunk)
            self.bytes_read += len(chunk)
            if chunk.endswith(b"\n"):
                return skipped + len(chunk.rstrip(b"\r\n"))
            skipped += len(chunk)


@dataclass(frozen=True, slots=True)
class LineProblem:
    """Why a line is not a JSON object: a reason code and a message."""

    reason: str
    message: str


def decode_line(raw: RawLine, max_line_bytes: int) -> dict[str, Any] | LineProblem:
    """The JSON object on a line, or why there is none (never raises for bad data)."""
    if raw.truncated:
        return LineProblem(
            "line_too_long", f"line is {raw.size} bytes, over the {max_line_bytes}-byte cap"
        )
    data = raw.data
    if not data.strip():
        return LineProblem("blank_line", "blank line")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return LineProblem("not_utf8", f"not valid UTF-8 at byte {bad.start}")
        return LineProblem("invalid_json", f"invalid JSON: {exc}")
    if type(obj) is not dict:
        return LineProblem("not_an_object", f"a JSON {_json_kind(obj)}, not an object")
    return obj


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


class Spill:
    """Admitted records parked on disk between passes, one JSON object per line in admission
    order, so a row's position is its record index. Rows arrive whole chunk files at a time
    (written by the admission workers); ``rows`` adds the index as ``"i"``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = path.open("wb")

    def append_file(self, part: Path) -> None:
        """Move the rows of ``part`` (a chunk's rows, in order) to the end of the spill."""
        assert self._handle is not None, "spill is closed"
        with part.open("rb") as source:
            shutil.copyfileobj(source, self._handle, _COPY_CHUNK)
        part.unlink()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def rows(self, wanted: set[int] | None = None) -> Iterator[dict[str, Any]]:
        """All rows, or only those whose index is in ``wanted`` (the rest are not parsed)."""
        with self.path.open("rb") as handle:
            for index, line in enumerate(handle):
                if wanted is not None and index not in wanted:
                    continue
                row = orjson.loads(line)
                row["i"] = index
                yield row
