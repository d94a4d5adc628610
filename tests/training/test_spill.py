"""The spill: chunk files moved in whole, read back in order, by row index across parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.spill import ArrowSpill, prompt_batch, write_batch


def _spill(tmp_path: Path, parts: list[list[str]]) -> ArrowSpill:
    spill = ArrowSpill(tmp_path / "spill")
    for number, texts in enumerate(parts):
        part = tmp_path / f".chunk-{number}.prompts"
        write_batch(prompt_batch(texts), part)
        spill.append_file(part)
        assert not part.exists()
    return spill


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.text(max_size=5), max_size=4), max_size=5), st.data())
def test_rows_and_values_address_records_across_parts(
    tmp_path_factory: pytest.TempPathFactory, parts: list[list[str]], data: st.DataObject
) -> None:
    """Row ``i`` is the ``i``-th text appended, whichever part (empty ones included) holds it."""
    flat = [text for part in parts for text in part]
    spill = _spill(tmp_path_factory.mktemp("spill"), parts)
    assert [t for _, (texts,) in spill.columns("s") for t in texts] == flat
    firsts = [first for first, _ in spill.columns("s")]
    assert firsts == [sum(len(p) for p in parts[:k]) for k in range(len(parts))]
    wanted = sorted(data.draw(st.sets(st.integers(0, max(len(flat) - 1, 0)))) if flat else [])
    assert spill.values("s", wanted) == [flat[i] for i in wanted]
    rows = list(spill.rows(set(wanted)))
    assert [(r["i"], r["s"]) for r in rows] == [(i, flat[i]) for i in wanted]
    spill.remove()
    assert not spill.directory.exists()


def test_a_spill_with_no_parts_is_empty(tmp_path: Path) -> None:
    spill = _spill(tmp_path, [])
    assert list(spill.batches()) == [] and spill.values("s", []) == []
    assert list(spill.rows(set())) == []
