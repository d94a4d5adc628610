"""The first pass of curation, per record: raw lines to admission outcomes, in chunks.

Everything that needs one record only runs here, in worker processes when ``read.workers`` > 1:
decoding, schema and rules, PII scrubbing, keys, the spill rows (written to a file per chunk,
which the main process appends to the spill: record text never crosses a pipe), the MinHash
signatures of the prompts, and the n-gram counts trigger detection needs (per chunk and
answer). The main process keeps what crosses records: exact duplicates, the LSH index, the
totals. Chunks are the reader's blocks (whole lines, cut by position; the workers split them), are
processed by the same code whatever the worker count, and come back in input order, so the
outcome of a run does not depend on ``workers``.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from training.dedup import band_keys, text_signatures
from training.grams import gram_table
from training.heap import keep_freed_memory
from training.quarantine import QuarantineRow, quarantine_scrubber, render_rows
from training.reader import Block, LineReader, RawLine, block_lines
from training.schema import Admission, Admitted
from training.spill import prompt_batch, spill_batch, write_batch

if TYPE_CHECKING:
    from training.curate_config import CurateConfig
    from training.special_tokens import SpecialTokens


class Chunk(NamedTuple):
    """One chunk's outcomes. ``rejects`` are its quarantine rows in input order, ``redacted``
    their JSON lines with the PII redacted (``quarantine.render_rows``, run in the worker); the
    admitted records are columns (row ``k`` of each is the ``k``-th admitted record of the
    chunk; ``flags`` and ``pii`` only for rows that have some), with their spill and
    prompt-spill rows already written to ``spill`` and ``prompts`` in the same order.
    ``signatures`` are the prompts' MinHash rows and ``band_keys`` their LSH band keys;
    ``gram_rows``/``gram_hashes`` the distinct word n-grams (hashed) of each row with an answer
    key, for trigger detection."""

    rejects: list[QuarantineRow]
    redacted: list[bytes]
    lines: list[int]
    ids: list[str]
    labels: list[str | None]
    keys: list[str | None]
    systems: list[int]
    tags: list[tuple[str, ...]]
    flags: dict[int, tuple[tuple[str, str], ...]]
    pii: dict[int, dict[str, int]]
    signatures: npt.NDArray[np.uint32]
    band_keys: npt.NDArray[np.uint64]
    gram_rows: npt.NDArray[np.int64]
    gram_hashes: npt.NDArray[np.uint64]
    spill: Path
    prompts: Path

    @property
    def read(self) -> int:
        return len(self.rejects) + len(self.lines)


_SYSTEM_KEYS: dict[str, int] = {}


def system_key(text: str) -> int:
    """A stable 64-bit key of the system prompt (``hash`` differs between spawned processes)."""
    key = _SYSTEM_KEYS.get(text)
    if key is None:
        key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        if len(_SYSTEM_KEYS) < 1024:
            _SYSTEM_KEYS[text] = key
    return key


def admit_chunk(
    admission: Admission, number: int, lines: Sequence[RawLine], where: Path, bands: int
) -> Chunk:
    """Admit chunk ``number``; its spill rows go to files in ``where``, its signatures are
    keyed for ``bands`` LSH bands."""
    cfg = admission.cfg
    count_grams = cfg.poison.triggers != "off"
    max_n = cfg.poison.trigger.max_n
    name = where / f".chunk-{number:08d}"
    chunk = Chunk([], [], [], [], [], [], [], [], {}, {}, _NO_SIGNATURES, _NO_KEYS, _NO_ROWS,
                  _NO_HASHES, name.with_suffix(".spill"), name.with_suffix(".prompts"))  # fmt: skip
    admitted: list[Admitted] = []
    similarity: list[str] = []
    keyed: list[int] = []
    for a in admission.lines(lines):
        if isinstance(a, QuarantineRow):
            chunk.rejects.append(a)
            continue
        row = len(chunk.lines)
        example = a.example
        chunk.lines.append(a.line or 0)
        chunk.ids.append(a.id)
        chunk.labels.append(example.label)
        chunk.keys.append(a.answer_key)
        chunk.systems.append(system_key(a.system))
        tags = example.metadata.get("tags", ())
        chunk.tags.append(tuple(tags) if isinstance(tags, list | tuple) else ())
        if a.flags:
            chunk.flags[row] = a.flags
        if a.pii:
            chunk.pii[row] = dict(a.pii)
        similarity.append(a.similarity)
        admitted.append(a)
        if a.answer_key is not None:
            keyed.append(row)
    # Redacting the rejected lines here keeps it in the workers, in parallel; the reading
    # process only writes the lines.
    chunk.redacted.extend(render_rows(chunk.rejects, quarantine_scrubber()))
    write_batch(spill_batch(admitted), chunk.spill)
    write_batch(prompt_batch(similarity), chunk.prompts)
    signatures = text_signatures(similarity, cfg.dedup)
    chunk = chunk._replace(signatures=signatures, band_keys=band_keys(signatures, bands))
    if not count_grams or not keyed:
        return chunk
    table = gram_table([similarity[row] for row in keyed], max_n)
    rows = np.asarray(keyed, dtype=np.int64)[table.rows]
    return chunk._replace(gram_rows=rows, gram_hashes=table.hashes)


_NO_SIGNATURES = np.zeros((0, 0), dtype=np.uint32)
_NO_KEYS = np.zeros((0, 0), dtype=np.uint64)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_HASHES = np.zeros(0, dtype=np.uint64)


def chunks(
    reader: LineReader, admission: Admission, workers: int, where: Path, bands: int
) -> Iterator[Chunk]:
    """The input's blocks (``reader.BLOCK_BYTES`` of whole lines) admitted in order, their
    spill files in ``where``; with ``workers`` > 1 in worker processes, which split the lines
    themselves (this process only cuts blocks and hashes them), at most ``2 * workers`` blocks
    in flight so the input is streamed."""
    cap = admission.cfg.read.max_line_bytes
    if workers <= 1:
        for number, block in enumerate(reader.blocks()):
            yield admit_chunk(admission, number, block_lines(block, cap), where, bands)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    initargs = (admission.cfg, admission.special)
    with context.Pool(workers, initializer=_start_worker, initargs=initargs) as pool:
        pending: deque[Any] = deque()
        for number, block in enumerate(reader.blocks()):
            pending.append(pool.apply_async(_admit_in_worker, (number, block, where, bands)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_worker_admission: Admission | None = None


def _start_worker(config: CurateConfig, special: SpecialTokens | None) -> None:
    global _worker_admission
    quiet_child_signals()
    # Workers hold no long-lived cycles; the collector would only rescan the chunk's objects.
    gc.disable()
    keep_freed_memory()
    _worker_admission = Admission(config, special)


def quiet_child_signals() -> None:
    """In a child: Ctrl-C is the parent's to handle (it stops the children), and SIGTERM,
    which the parent turns into an exit, ends a child at once, without a traceback each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _admit_in_worker(number: int, block: Block, where: Path, bands: int) -> Chunk:
    assert _worker_admission is not None
    lines = block_lines(block, _worker_admission.cfg.read.max_line_bytes)
    return admit_chunk(_worker_admission, number, lines, where, bands)


def in_fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class InFork:
    """``fn()`` computed in a forked child (which inherits the parent's state, so nothing is
    pickled on the way in) while the parent goes on; ``result()`` waits for it. An exception
    in the child is raised again in the parent."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        context = multiprocessing.get_context("fork")
        self._reader, writer = context.Pipe(duplex=False)
        self._process = context.Process(target=_send, args=(fn, writer), daemon=True)
        self._process.start()
        writer.close()

    def cancel(self) -> None:
        """Stop the child without its result (the parent failed and is unwinding)."""
        self._process.terminate()
        self._process.join()
        self._reader.close()

    def result(self) -> Any:
        try:
            ok, value = self._reader.recv()
        except EOFError:
            ok, value = False, RuntimeError("the forked process died without a result")
        finally:
            self._process.join()
            self._reader.close()
        if not ok:
            raise value
        return value


def _send(fn: Callable[[], Any], writer: Any) -> None:
    quiet_child_signals()
    keep_freed_memory()
    try:
        result = (True, fn())
    except BaseException as exc:  # the parent re-raises it
        result = (False, exc)
    writer.send(result)
    writer.close()
