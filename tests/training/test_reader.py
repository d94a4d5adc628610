"""The block reader: blocks cut anywhere split back into exactly the file's lines."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from training.reader import BOM, PREVIEW_BYTES, LineReader, RawLine, block_lines


def reference(data: bytes, cap: int) -> list[RawLine]:
    """Lines as ``bytes.split`` sees them: BOM dropped, CRs before the newline dropped, lines
    over the cap cut to a preview."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    pieces = data.split(b"\n")
    if not data or data.endswith(b"\n"):
        pieces.pop()
    lines = []
    for number, piece in enumerate(pieces, 1):
        text = piece.rstrip(b"\r")
        long = len(text) > cap
        lines.append(RawLine(number, text[:PREVIEW_BYTES] if long else text, len(text), long))
    return lines


lines_st = st.lists(
    st.one_of(
        st.binary(max_size=8),
        st.text(alphabet="ab\r", max_size=300).map(str.encode),
        st.integers(0, 3000).map(lambda n: b"x" * n),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=lines_st,
    bom=st.booleans(),
    final_newline=st.booleans(),
    cap=st.sampled_from([64, 100, 1000]),
    block=st.sampled_from([1, 7, 64, 200, 4096]),
)
def test_blocks_split_back_into_the_lines(
    lines: list[bytes], bom: bool, final_newline: bool, cap: int, block: int
) -> None:
    """Whatever the block size, the lines, their numbers, sizes and the over-long verdicts
    equal a plain split of the file, and the digest covers every byte read."""
    data = (BOM if bom else b"") + b"\n".join(lines) + (b"\n" if final_newline else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.jsonl"
        path.write_bytes(data)
        reader = LineReader(path, max_line_bytes=cap)
        got = [line for b in reader.blocks(block) for line in block_lines(b, cap)]
        assert got == reference(data, cap)
        assert reader.sha256 == hashlib.sha256(data).hexdigest()
        assert reader.bytes_read == len(data)
        assert list(LineReader(path, max_line_bytes=cap)) == got


def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    """A line far over the cap comes back as its own block with a preview and its full size,
    and the lines after it are read normally."""
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"a\n" + b"y" * 5_000_000 + b"\r\nb\n")
    reader = LineReader(path, max_line_bytes=100)
    blocks = list(reader.blocks(4096))
    assert any(b.long is not None and b.long.size == 5_000_000 for b in blocks)
    assert max(len(b.data) for b in blocks) < 10_000
    lines = [line for b in blocks for line in block_lines(b, 100)]
    assert [(n.number, n.size, n.truncated) for n in lines] == [
        (1, 1, False), (2, 5_000_000, True), (3, 1, False)
    ]  # fmt: skip
