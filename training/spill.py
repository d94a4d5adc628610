"""The admitted records' spill: Arrow record batches on disk, in admission order.

Workers turn each chunk's admitted records into one record batch (``spill_batch``) and write it
to a file of its own; the main process moves those files into the spill's directory in order,
without looking inside. The final pass then moves kept rows to the dataset a batch at a time
and other passes read single rows back by index; nothing is parsed twice, and no pass makes a
Python object per row except for the rows it asked for. (A JSON-lines spill cost ~13 us a row
to write and as much again to parse in the final pass.)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from training.manifest import row_hash

if TYPE_CHECKING:
    from training.schema import Admitted

FIELDS = ("line", "raw", "id", "turns", "label", "source", "mj", "h")


def spill_schema() -> Any:
    """Per row: input line, raw line, content id, scrubbed turns, label, source, metadata JSON
    (sorted keys) and ``row_hash``; turns have the dataset's own type, so kept rows move to it
    as they are."""
    import pyarrow as pa

    string = pa.string()
    turn = pa.struct([("role", string), ("content", string)])
    types = (pa.int64(), string, string, pa.list_(turn), string, string, string, string)
    return pa.schema(list(zip(FIELDS, types, strict=True)))


def spill_batch(admitted: Sequence[Admitted]) -> Any:
    """One record batch of admitted records, built by column."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in FIELDS if name != "turns"}
    roles: list[str] = []
    contents: list[str] = []
    offsets = [0]
    for a in admitted:
        example = a.example
        turns = [{"role": role, "content": content} for role, content in example.messages]
        meta_json = orjson.dumps(example.metadata, option=orjson.OPT_SORT_KEYS).decode()
        columns["line"].append(a.line)
        columns["raw"].append(a.raw)
        columns["id"].append(a.id)
        columns["label"].append(example.label)
        columns["source"].append(example.source)
        columns["mj"].append(meta_json)
        columns["h"].append(row_hash(a.id, turns, example.label, example.source, meta_json))
        for role, content in example.messages:
            roles.append(role)
            contents.append(content)
        offsets.append(len(roles))
    schema = spill_schema()
    turns_type = schema.field("turns").type
    turn_array = pa.StructArray.from_arrays(
        [pa.array(roles, pa.string()), pa.array(contents, pa.string())],
        fields=list(turns_type.value_type),
    )
    arrays = {name: pa.array(values, schema.field(name).type) for name, values in columns.items()}
    arrays["turns"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turn_array)
    return pa.RecordBatch.from_arrays([arrays[name] for name in FIELDS], schema=schema)


def prompt_schema() -> Any:
    """The prompts' spill, per admitted record: the similarity text of its prompt (``s``),
    which the near-duplicate, trigger and augmentation passes read back without touching the
    records themselves."""
    import pyarrow as pa

    return pa.schema([("s", pa.string())])


def prompt_batch(similarity: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array(similarity, pa.string())], schema=prompt_schema())


def write_batch(batch: Any, path: Path) -> None:
    """One batch as an Arrow IPC stream file (a chunk's part of the spill)."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)


class ArrowSpill:
    """Rows parked on disk between passes, one per admitted record in admission order, so a
    row's position is its record index: the records (``spill_batch``) or their prompts
    (``prompt_batch``). The spill is a directory of the chunks' own files (``write_batch``),
    moved in whole and read back in order: nothing is copied on the way in."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self._parts: list[Path] = []

    def append_file(self, part: Path) -> None:
        """Move ``part`` (an Arrow stream file on the same file system) to the spill's end."""
        target = self.directory / f"{len(self._parts):08d}.arrow"
        part.rename(target)
        self._parts.append(target)

    def remove(self) -> None:
        shutil.rmtree(self.directory)

    def batches(self) -> Iterator[tuple[int, Any]]:
        """All rows, as the record batches they were written in, each with the index of its
        first row."""
        import pyarrow as pa

        first = 0
        for part in self._parts:
            # Read, not memory-mapped: mapped pages would count towards the process's resident
            # memory for the whole spill.
            with pa.OSFile(str(part), "rb") as source:
                for batch in pa.ipc.open_stream(source):
                    yield first, batch
                    first += batch.num_rows

    def columns(self, *names: str) -> Iterator[tuple[int, tuple[list[Any], ...]]]:
        """Batch by batch, the index of the first row and the named columns as Python lists
        (all rows, in order)."""
        for first, batch in self.batches():
            yield first, tuple(batch.column(name).to_pylist() for name in names)

    def rows(self, wanted: set[int]) -> Iterator[dict[str, Any]]:
        """The rows whose index is in ``wanted``, in order, as dicts with the index as ``"i"``
        (only those rows become Python objects)."""
        for indices, picked in self._picked(sorted(wanted)):
            for index, row in zip(indices, picked.to_pylist(), strict=True):
                row["i"] = index
                yield row

    def values(self, name: str, rows: Sequence[int]) -> list[Any]:
        """Column ``name`` of ``rows`` (ascending indices), as a list in that order."""
        out: list[Any] = []
        for _, picked in self._picked(rows):
            out += picked.column(name).to_pylist()
        return out

    def _picked(self, ordered: Sequence[int]) -> Iterator[tuple[list[int], Any]]:
        """Per batch holding some of ``ordered`` (ascending indices): those indices and the
        batch's rows at them."""
        import numpy as np

        if not len(ordered):
            return
        wanted = np.asarray(ordered, dtype=np.int64)
        for first, batch in self.batches():
            lo, hi = np.searchsorted(wanted, [first, first + batch.num_rows])
            if hi > lo:
                yield wanted[lo:hi].tolist(), batch.take(wanted[lo:hi] - first)
