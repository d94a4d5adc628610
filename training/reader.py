"""Streaming, byte-level line reader for raw JSONL.

Lines are read as bytes in blocks of whole lines with a length cap, so neither a 10 GB file nor a
single 10 GB line is ever held in memory; the input's sha256 is computed on the same pass. A block
is split into lines where it is processed: with workers, the reading process only cuts blocks. A
UTF-8 BOM on the first line is dropped. Decoding is left to the JSON parser, which validates
UTF-8 itself, so only lines it rejects pay for a second look.
"""

from __future__ import annotations

import hashlib
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
_TAIL_BYTES = 64
# Bytes of whole lines per block handed to a worker: about 2,000 records of 500 bytes.
BLOCK_BYTES = 1 << 20


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
        for block in self.blocks():
            yield from block_lines(block, self.max_line_bytes)

    def blocks(self, size: int | None = None) -> Iterator[Block]:
        """The file as ``Block``s of whole lines, about ``size`` (default ``BLOCK_BYTES``) bytes
        each, so the lines can be split where they are processed (a worker) rather than here."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise DataError(f"cannot read input file {self.path}: {exc.strerror}") from None
        with handle:
            yield from self._blocks(handle, max(size or BLOCK_BYTES, len(BOM)))

    def _read(self, handle: BinaryIO, size: int) -> bytes:
        data = handle.read(size)
        self._digest.update(data)
        self.bytes_read += len(data)
        return data

    def _blocks(self, handle: BinaryIO, size: int) -> Iterator[Block]:
        cap = self.max_line_bytes
        number = 1
        data = self._read(handle, size)
        pending = data[len(BOM) :] if data.startswith(BOM) else data
        while data:
            data = self._read(handle, size)
            pending += data
            cut = pending.rfind(b"\n")
            if cut >= 0 or (pending and not data):
                end = cut + 1 if data else len(pending)
                whole, pending = pending[:end], pending[end:]
                yield Block(number, whole)
                number += whole.count(b"\n") + (0 if whole.endswith(b"\n") else 1)
            # What is left is the start of one line; past the cap (trailing CRs aside, they may
            # belong to its terminator) it is over-long, and the rest of it is skipped unread.
            if len(pending.rstrip(b"\r")) > cap:
                line, pending = self._long_line(handle, number, pending)
                yield Block(number, b"", line)
                number += 1

    def _long_line(self, handle: BinaryIO, number: int, start: bytes) -> tuple[RawLine, bytes]:
        """Consume an over-long line that begins with ``start``, in bounded reads; return its
        preview and length, and the bytes after its terminator."""
        size = len(start)
        tail = start[-_TAIL_BYTES:]
        preview = start[:PREVIEW_BYTES]
        rest = b""
        while True:
            data = self._read(handle, _SKIP_CHUNK)
            if not data:
                break
            end = data.find(b"\n")
            if end >= 0:
                rest = data[end + 1 :]
                data = data[:end]
            size += len(data)
            tail = (tail + data)[-_TAIL_BYTES:]
            preview += data[: PREVIEW_BYTES - len(preview)]
            if end >= 0:
                break
        # Trailing CRs are part of the terminator, as for any line.
        size -= len(tail) - len(tail.rstrip(b"\r"))
        return RawLine(number, preview[:size], size, truncated=True), rest


class Block(NamedTuple):
    """Consecutive input lines numbered from ``first``: ``data`` holds whole lines (each ending
    in a newline but perhaps the file's last), or ``long`` is one over-long line, already cut."""

    first: int
    data: bytes
    long: RawLine | None = None


def block_lines(block: Block, max_line_bytes: int) -> list[RawLine]:
    """The ``RawLine``s of a block; lines over ``max_line_bytes`` keep only a preview."""
    if block.long is not None:
        return [block.long]
    pieces = block.data.split(b"\n")
    if block.data.endswith(b"\n"):
        pieces.pop()
    lines = []
    for number, piece in enumerate(pieces, block.first):
        data = piece.rstrip(b"\r")
        if len(data) <= max_line_bytes:
            lines.append(RawLine(number, data, len(data)))
        else:
            lines.append(RawLine(number, data[:PREVIEW_BYTES], len(data), truncated=True))
    return lines


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
