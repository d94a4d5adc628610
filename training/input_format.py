"""What an input file looks like when it is not UTF-8 JSON Lines, from its first bytes.

Curation quarantines bad *lines*; a file in the wrong *format* (compressed, UTF-16, one
pretty-printed document, a top-level array, old-Mac CR line ends) would become a quarantine of
garbage and an empty dataset. ``sniff`` looks at the head of the file (64 KiB) for signatures
that no JSON Lines file has, so the run stops at once with one line saying what the file seems
to be and how to convert it. It never reads the whole file and never guesses from one bad line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

HEAD_BYTES = 1 << 16
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed", "gunzip -k"),
    (b"BZh", "bzip2-compressed", "bunzip2 -k"),
    (b"\xfd7zXZ\x00", "xz-compressed", "unxz -k"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "unzstd"),
    (b"PK\x03\x04", "a zip archive", "unzip"),
)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


@dataclass(frozen=True)
class Sniffed:
    """Why the file is not JSON Lines; ``empty`` findings may be waived (``--allow-empty``)."""

    looks: str
    empty: bool = False


def sniff(path: Path, size: int) -> Sniffed | None:
    """What ``path`` (``size`` bytes) looks like if it is plainly not UTF-8 JSON Lines."""
    if size == 0:
        return Sniffed("is empty (0 bytes); expected chat JSONL, one object per line", empty=True)
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    for magic, kind, tool in _MAGIC:
        if head.startswith(magic):
            return Sniffed(f"looks {kind}, not JSON Lines; decompress it first ({tool} {path})")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return Sniffed(_encoding_hint(encoding, path, "byte-order mark"))
    if b"\x00" in head:
        # JSON text never holds a raw NUL; every other byte NUL is UTF-16 without a BOM.
        wide = head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4
        return Sniffed(_encoding_hint("UTF-16" if wide else "binary", path, "NUL bytes"))
    whole = size <= len(head)
    if whole and not head.strip():
        return Sniffed("holds only whitespace; expected chat JSONL, one object per line", True)
    body = head.rstrip(b"\r\n")
    if b"\n" not in head and b"\r" in body:
        return Sniffed(
            "uses bare CR (old Mac) line endings, so it reads as one line; convert them to LF "
            f"(tr '\\r' '\\n' < {path})"
        )
    return _document_shape(head, whole, path)


def _encoding_hint(encoding: str, path: Path, evidence: str) -> str:
    if encoding == "binary":
        return "holds NUL bytes: binary data, not UTF-8 JSON Lines"
    return (
        f"looks {encoding} encoded ({evidence}), not UTF-8; convert it "
        f"(iconv -f {encoding} -t UTF-8 {path})"
    )


def _document_shape(head: bytes, whole: bool, path: Path) -> Sniffed | None:
    """One JSON document spread over lines (pretty-printed, or a top-level array)."""
    lines = [line.strip() for line in head.split(b"\n")]
    if not whole:
        lines = lines[:-1]  # the last piece may be cut mid-line
    lines = [line for line in lines if line]
    if not lines:
        return None
    first = lines[0]
    if first.startswith(b"[") and whole and len(lines) == 1 and _parses(first):
        return Sniffed(
            "looks like one JSON array on one line, not JSON Lines (one object per line); "
            f"convert it (jq -c '.[]' {path})"
        )
    if _parses(first):
        return None
    follows = lines[1] if len(lines) > 1 else b""
    opens = follows[:1] in (b'"', b"}", b"]", b"{", b"[")
    continued = not follows or (opens and not _parses(follows))
    if first.startswith(b"[") and continued:
        return Sniffed(
            "looks like one JSON array spread over lines, not JSON Lines (one object per "
            f"line); convert it (jq -c '.[]' {path})"
        )
    if first.startswith(b"{") and continued:
        return Sniffed(
            "looks like pretty-printed (multi-line) JSON, not JSON Lines (one object per "
            f"line); convert it (jq -c . {path})"
        )
    return None


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True
