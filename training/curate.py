"""The curation pipeline: raw chat JSONL in; a versioned dataset, quarantine and manifest out.

The input is read once. Admitted records go to a spill in the staging directory, so the
corpus never sits in memory; what stays in memory per record is a few small fields, the LSH
band keys and (on disk) the MinHash signature.
1. in chunks, in worker processes (``curate_read``): JSON -> schema, label and quality rules ->
   PII scrub -> keys, spill rows, signatures, n-gram counts; then here, in input order: exact
   dedup, the LSH index and the trigger totals.
2. near-duplicate groups, conflicting answers and golden leakage, over LSH-flagged rows only.
3. trigger n-grams (a spill pass only when candidates exist), split, augmentation, and a final
   spill pass writing the dataset and the quarantine rows of everything removed after step 1.
Every input line ends up kept or in ``quarantine.jsonl``, and ``_finish`` checks the sum.
"""

from __future__ import annotations

import gc
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from training import poison
from training.curate_augment import run_augmentation
from training.curate_config import CurateConfig
from training.curate_read import Chunk, InFork, chunks, in_fork_available
from training.dedup import UnionFind, near_pairs, similarity_text
from training.dedup_index import CandidateIndex
from training.errors import DataError, TrainingError
from training.input_format import sniff
from training.leakage import GoldenPrompts
from training.manifest import (
    DATASET,
    MANIFEST,
    QUARANTINE,
    SPLITS,
    DatasetSink,
    build_manifest,
    promote,
    staging_dir,
    stratified_split,
    write_json_atomic,
)
from training.models import EMBEDDED
from training.outputs import output_errors, refuse_input_inside_output
from training.pii import PII_TYPES
from training.quarantine import (
    REASONS,
    QuarantineRow,
    QuarantineWriter,
    describe_reason,
    merge_by_line,
    message_for,
    quarantine_scrubber,
    render_rows,
)
from training.reader import LineReader
from training.schema import Admission
from training.special_tokens import SpecialTokens, load_special_tokens
from training.spill import ArrowSpill
from training.teacher import Teacher
from training.triggers import Trigger, TriggerStats, detect_triggers

TriggerSearch = tuple[list[Trigger], dict[int, str], dict[str, int]]
_ORDER = {code: i for i, code in enumerate(REASONS)}


class Progress(Protocol):
    """Where the pipeline reports progress (a rich bar in the CLI, nothing in tests)."""

    def stage(self, name: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class NoProgress:
    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


def curate(
    input_path: Path,
    out: Path,
    config: CurateConfig,
    *,
    golden: GoldenPrompts | None = None,
    teacher: Teacher | None = None,
    progress: Progress | None = None,
    special_tokens: SpecialTokens | None = None,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Run the pipeline; ``out`` appears complete or not at all. Returns the manifest.

    ``special_tokens`` are screened in every turn (default: the embedded model's tokenizer's,
    see ``special_tokens.load_special_tokens``). A run that keeps no training row is a
    ``DataError`` naming the input and what its lines looked like, and nothing is written,
    unless ``allow_empty``. Any ``OSError`` on the output side is an ``OutputError``."""
    refuse_input_inside_output(input_path, out, "input file")
    reader = LineReader(input_path, max_line_bytes=config.read.max_line_bytes)
    sniffed = sniff(reader.path, reader.size)
    if sniffed is not None and not (sniffed.empty and allow_empty):
        raise DataError(f"input file {reader.path} {sniffed.looks}")
    if config.augment.n > 0 and teacher is None:
        raise TrainingError("augmentation requested (augment.n > 0) but no teacher was given")
    special = special_tokens if special_tokens is not None else load_special_tokens(EMBEDDED)
    with output_errors(out):
        staging = staging_dir(out)
        # The run keeps a few small objects per record alive until the end; the cyclic
        # collector would rescan them all, ever more slowly, and there are no cycles to find.
        collecting = gc.isenabled()
        gc.disable()
        try:
            run = _Run(config, staging.path, golden, teacher, progress or NoProgress(), special)
            manifest = run.run(reader)
            if not allow_empty and manifest["counts"]["train"] == 0:
                raise DataError(empty_result_message(reader.path, manifest, run.first_reject))
            promote(staging.path, out)
        except BaseException:
            shutil.rmtree(staging.path, ignore_errors=True)
            raise
        finally:
            staging.release()
            if collecting:
                gc.enable()
    return manifest


def empty_result_message(path: Path, manifest: Mapping[str, Any], first: str | None) -> str:
    """One line: the input kept no training row, and what its lines were quarantined for."""
    counts = manifest["counts"]
    reasons = sorted(manifest["reasons"].items(), key=lambda item: (-item[1], item[0]))
    why = ", ".join(f"{reason} x{n}" for reason, n in reasons[:3]) or "no lines"
    if counts["read"] == 0:
        looks = "it has no lines"
    elif counts["kept"] == 0:
        looks = f"every line was quarantined: {counts['read']} read, {why}"
    else:
        looks = f"{counts['kept']} records kept but none in the train split"
    example = f"; first: {first}" if first else ""
    return (
        f"{path}: no training records ({looks}){example}; is it chat JSONL, one object per line? "
        "pass --allow-empty to write an empty dataset anyway"
    )


class _Run:
    def __init__(
        self,
        config: CurateConfig,
        staging: Path,
        golden: GoldenPrompts | None,
        teacher: Teacher | None,
        progress: Progress,
        special: SpecialTokens | None = None,
    ) -> None:
        self.cfg = config
        self.staging = staging
        self.golden = golden
        self.teacher = teacher
        self.progress = progress
        self.admission = Admission(config, special)
        self.first_reject: str | None = None
        self.spill = ArrowSpill(staging / ".spill")
        # The prompts' similarity texts, for the passes that need nothing else (near-dup detail,
        # triggers, augmentation): small rows, cheap to re-read.
        self.prompts = ArrowSpill(staging / ".prompts")
        self.golden_n = len(golden.texts) if golden else 0
        thresholds = [config.dedup.threshold] + ([config.leakage.threshold] if golden else [])
        self.signatures = staging / ".signatures.u32"
        self.index = CandidateIndex(config.dedup, min(thresholds), self.signatures)
        self.golden_sims = [similarity_text(t) for t in golden.texts] if golden else []
        self.index.add(self.golden_sims)
        self.triggers = TriggerStats(config.poison.trigger)
        # Per admitted record, by spill index. ``unique`` lists the non-exact-dup records in
        # order; the LSH key of unique[k] is golden_n + k.
        self.lines: list[int] = []
        self.keys: list[str | None] = []
        self.system: list[int] = []
        self.labels: list[str | None] = []
        self.tags: list[tuple[str, ...]] = []
        self.ids: list[str] = []
        self.unique: list[int] = []
        self.seen: dict[tuple[str, str | None], int] = {}
        # Exact duplicate -> its kept twin (both spill indices).
        self.dup_of: dict[int, int] = {}
        self.removed: dict[int, list[str]] = defaultdict(list)
        self.pointer: dict[int, int] = {}
        self.detail: dict[int, dict[str, Any]] = defaultdict(dict)
        self.warnings: list[dict[str, Any]] = []
        self.flags: dict[int, tuple[tuple[str, str], ...]] = {}
        self.stats: dict[str, Any] = {
            "pii_records": 0,
            "pii": Counter(dict.fromkeys(PII_TYPES, 0)),
            "labels_before": Counter(),
            "near_groups": 0,
            "conflict_groups": 0,
            "triggers": [],
        }

    def run(self, reader: LineReader) -> dict[str, Any]:
        early = self.staging / ".quarantine-early.jsonl"
        with QuarantineWriter(early) as rejects:
            self.progress.stage("read", reader.size)
            read = reported = 0
            workers = self.cfg.read.workers
            bands = self.index.bands
            for chunk in chunks(reader, self.admission, workers, self.staging, bands):
                read += chunk.read
                self._take(chunk, rejects)
                self.progress.advance(reader.bytes_read - reported)
                reported = reader.bytes_read
        self.stats.update(read=read, input_sha256=reader.sha256, input_bytes=reader.bytes_read)
        self.stats["input_path"] = str(reader.path)
        special = self.admission.special
        self.stats["special_tokens"] = special.describe() if special else None
        # Trigger detection needs only the first pass's totals: with workers, it runs in a
        # forked process while this one does the near-duplicate pass.
        searching = self.cfg.poison.triggers != "off"
        self.progress.stage("near-duplicates" + (", trigger n-grams" if searching else ""), None)
        forked = self.cfg.read.workers > 1 and searching and in_fork_available()
        triggers = InFork(self._search_triggers) if forked else None
        self._near_duplicates()
        self._answer_flags()
        if searching:
            self._trigger_flags(triggers.result() if triggers else self._search_triggers())
        return self._finish(early, rejects)

    def _take(self, chunk: Chunk, rejects: QuarantineWriter) -> None:
        """Account for one chunk in input order: quarantine rows, exact duplicates, unique
        records (small fields, spill rows, signatures and trigger totals)."""
        for reject, line in zip(chunk.rejects, chunk.redacted, strict=True):
            rejects.write(reject, line)
        if self.first_reject is None and chunk.rejects:
            self.first_reject = chunk.rejects[0].message
        self.spill.append_file(chunk.spill)
        self.prompts.append_file(chunk.prompts)
        self.stats["labels_before"].update([label or "<none>" for label in chunk.labels])
        for counts in chunk.pii.values():
            self.stats["pii_records"] += 1
            self.stats["pii"].update(counts)
        # Columns are taken whole; exact duplicates (found below) are then blanked, since only
        # unique records are looked up by index later.
        first = len(self.lines)
        self.lines += chunk.lines
        self.keys += chunk.keys
        self.system += chunk.systems
        self.labels += chunk.labels
        self.tags += chunk.tags
        self.ids += chunk.ids
        seen = self.seen
        unique_rows: list[int] = []
        for row, pair in enumerate(zip(chunk.ids, chunk.labels, strict=True)):
            index = first + row
            twin = seen.get(pair)
            if twin is None:
                seen[pair] = index
                unique_rows.append(row)
                continue
            self.dup_of[index] = twin
            self.keys[index] = self.labels[index] = None
            self.ids[index] = ""
            self.system[index] = 0
            self.tags[index] = ()
        self.unique += [first + row for row in unique_rows]
        for row, flags in chunk.flags.items():
            if first + row not in self.dup_of:
                self.flags[first + row] = flags
        # The class of each row counted for trigger detection (-1: a duplicate, no answer key,
        # or an answer past the class cap), so the chunk's n-grams are added for those only.
        keyed = [row for row in unique_rows if chunk.keys[row] is not None]
        classes = np.full(len(chunk.lines), -1, dtype=np.int64)
        numbers = self.triggers.count_all([chunk.keys[row] or "" for row in keyed])
        classes[np.asarray(keyed, dtype=np.int64)] = numbers
        unique_at = np.asarray(unique_rows, dtype=np.int64)
        self.index.add_signatures(chunk.signatures[unique_at], chunk.band_keys[unique_at])
        if len(chunk.gram_rows):
            owner = classes[chunk.gram_rows]
            counted = owner >= 0
            self.triggers.add_grams(owner[counted], chunk.gram_hashes[counted])

    def _near_duplicates(self) -> None:
        g = self.golden_n
        marked = np.flatnonzero(self.index.flags())
        flagged = marked[marked >= g] - g
        # Unique records' indices ascend, so these rows do too, as the spill lookup wants.
        rows: list[int] = np.asarray(self.unique, dtype=np.int64)[flagged].tolist()
        texts = self.golden_sims + self.prompts.values("s", rows)
        at = np.concatenate([np.arange(g, dtype=np.int64), flagged + g])
        sigs, keys = self.index.signatures(at), self.index.keys(at)
        order = [f"\0{case}" for case in (self.golden.ids if self.golden else ())]
        order += [f"{self.ids[i]}\t{self.labels[i] or ''}" for i in rows]
        union = UnionFind(len(rows))
        limits = [self.cfg.dedup.threshold] + ([self.cfg.leakage.threshold] if g else [])
        pairs = near_pairs(texts, order, self.cfg.dedup, self.index.bands, limits, sigs, keys)
        for a, b, similarity in pairs:
            if b < g:
                continue
            if a < g:
                if self.golden and similarity >= self.cfg.leakage.threshold:
                    self._leak(rows[b - g], self.golden.ids[a], similarity)
            elif (
                similarity >= self.cfg.dedup.threshold
                and self.system[rows[a - g]] == self.system[rows[b - g]]
            ):
                union.union(a - g, b - g)
        groups = [sorted(rows[k] for k in group) for group in union.groups()]
        # Free-form answers (no class key) are compared by text, read back only when needed.
        free = {m for members in groups for m in members if self.keys[m] is None}
        answers = {r["i"]: r["turns"][-1]["content"] for r in self.spill.rows(free)} if free else {}
        for members in groups:
            self._resolve_group(members, [answers.get(m, "") for m in members])

    def _leak(self, row: int, case_id: str, similarity: float) -> None:
        if "golden_leakage" not in self.removed[row]:
            self.removed[row].append("golden_leakage")
            self.detail[row].update(golden_case=case_id, golden_similarity=round(similarity, 4))

    def _resolve_group(self, members: list[int], answers: list[str]) -> None:
        keys = [self.keys[m] for m in members]
        policy = self.cfg.poison.conflicts
        lines = [self.lines[m] for m in members]
        threshold = self.cfg.poison.answer_similarity
        if policy != "off" and poison.answers_conflict(keys, answers, threshold):
            self.stats["conflict_groups"] += 1
            self._flag(members, "conflicting_answers", policy, conflict_group=lines)
            return
        self.stats["near_groups"] += 1
        for member in members[1:]:
            self.removed[member].append("near_duplicate")
            self.pointer[member] = members[0]

    def _flag(self, members: Sequence[int], reason: str, policy: str, **detail: Any) -> None:
        if policy == "warn":
            lines = [self.lines[m] for m in members]
            self.warnings.append({"reason": reason, "lines": lines, **detail})
            return
        for member in members:
            if reason not in self.removed[member]:
                self.removed[member].append(reason)
                self.detail[member].update(detail)

    def _answer_flags(self) -> None:
        policies = {"injection_in_answer": self.cfg.poison.injection,
                    "url_in_answer": self.cfg.poison.urls}  # fmt: skip
        for index, flags in self.flags.items():
            for reason, snippet in flags:
                if policies[reason] != "off":
                    self._flag([index], reason, policies[reason], match=snippet)

    def _search_triggers(self) -> TriggerSearch:
        def records() -> Iterator[list[tuple[int, str, str, str]]]:
            # A batch per spill batch; exact duplicates' keys were blanked when they were found.
            keys, ids = self.keys, self.ids
            for first, (texts,) in self.prompts.columns("s"):
                end = first + len(texts)
                rows = zip(range(first, end), texts, keys[first:end], strict=True)
                yield [(i, text, key, ids[i]) for i, text, key in rows if key is not None]

        return detect_triggers(self.triggers, records)

    def _trigger_flags(self, search: TriggerSearch) -> None:
        found, flagged, summary = search
        self.stats["triggers"] = [t.__dict__ for t in found]
        self.stats["trigger_search"] = summary
        for index, gram in sorted(flagged.items()):
            self._flag([index], "trigger_ngram", self.cfg.poison.triggers, trigger=gram)

    def _finish(self, early: Path, rejects: QuarantineWriter) -> dict[str, Any]:
        removed = {i for i, reasons in self.removed.items() if reasons}
        survivors = [i for i in self.unique if i not in removed]
        late = self.staging / ".quarantine-late.jsonl"
        # The quarantine rows of everything not kept depend on nothing decided below; with
        # workers they are written, and merged with the early ones, by a forked process while
        # this one writes and saves the dataset.
        dropped = np.ones(len(self.lines), dtype=bool)
        dropped[np.asarray(survivors, dtype=np.int64)] = False
        forked = self.cfg.read.workers > 1 and in_fork_available()
        quarantine = (early, late, dropped)
        writing = InFork(lambda: self._write_quarantine(*quarantine)) if forked else None
        try:
            sink, augment_summary = self._write_dataset(survivors)
            sink.save(self.staging / DATASET)
        except BaseException:
            if writing:
                writing.cancel()
            raise
        by_stage, by_reason = writing.result() if writing else self._write_quarantine(*quarantine)
        self.index.close()
        for path in (early, late, self.signatures):
            path.unlink()
        self.spill.remove()
        self.prompts.remove()
        stages = Counter(rejects.by_stage) + Counter(by_stage)
        quarantined = sum(stages.values())
        if len(survivors) + quarantined != self.stats["read"]:
            raise TrainingError(
                f"internal accounting error: {self.stats['read']} lines read, "
                f"{len(survivors)} kept, {quarantined} quarantined; no dataset written"
            )
        manifest = build_manifest(
            self.cfg,
            self.stats,
            stages=stages,
            reasons=Counter(rejects.by_reason) + Counter(by_reason),
            sink=sink,
            after=Counter(self.labels[i] or "<none>" for i in survivors),
            warnings=self.warnings,
            golden=self.golden,
            augment=augment_summary,
            bands=self.index.bands,
        )
        write_json_atomic(manifest, self.staging / MANIFEST)
        return manifest

    def _write_dataset(self, survivors: list[int]) -> tuple[DatasetSink, dict[str, Any]]:
        """Split the survivors, augment, and stream the kept rows into the dataset's sink."""
        split = stratified_split(
            {i: self.ids[i] for i in survivors},
            {i: self.labels[i] for i in survivors},
            self.cfg.split.validation_fraction,
            self.cfg.split.seed,
        )
        if len(split) != len(survivors):
            # The quarantine side counts on every survivor reaching a split.
            raise TrainingError(f"internal error: {len(survivors)} kept, {len(split)} split")
        synthetic, augment_summary = run_augmentation(self, survivors, split)
        sink = DatasetSink(self.staging)
        self.progress.stage("write", len(self.lines))
        # Per spill row: the split it goes to, or -1 when it is quarantined.
        where = np.full(len(self.lines), -1, dtype=np.int8)
        for index, name in split.items():
            where[index] = SPLITS.index(name)
        for first, batch in self.spill.batches():
            here = where[first : first + batch.num_rows]
            for number, name in enumerate(SPLITS):
                sink.add_table(name, batch.filter(here == number))
            self.progress.advance(batch.num_rows)
        for row in synthetic:
            sink.add("train", *row)
        return sink, augment_summary

    def _write_quarantine(
        self, early: Path, late: Path, dropped: npt.NDArray[np.bool_]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """The quarantine rows of the spill rows marked ``dropped``, in spill order, to
        ``late``, then ``early`` and ``late`` merged into the quarantine file; the late rows'
        counts by stage and by reason."""
        with QuarantineWriter(late) as writer:
            for first, batch in self.spill.batches():
                out = np.flatnonzero(dropped[first : first + batch.num_rows])
                raws = batch.column("raw").take(out).to_pylist()
                rows = [
                    self._quarantine_row(first + offset, raw)
                    for offset, raw in zip(out.tolist(), raws, strict=True)
                ]
                # One pre-screen per batch rather than one per row.
                for row, line in zip(rows, render_rows(rows, quarantine_scrubber()), strict=True):
                    writer.write(row, line)
        merge_by_line([early, late], self.staging / QUARANTINE)
        return writer.by_stage, writer.by_reason

    def _quarantine_row(self, index: int, raw: str) -> QuarantineRow:
        exact = index in self.dup_of
        twin = self.dup_of[index] if exact else self.pointer.get(index)
        reasons = ["exact_duplicate"] if exact else list(self.removed[index])
        if twin is not None:
            # The twin was kept unless it was removed later; then this line shares its fate.
            reasons += [r for r in self.removed.get(twin, ()) if r not in reasons]
        reasons.sort(key=_ORDER.__getitem__)
        detail = dict(self.detail.get(index, {}))
        twin_line = self.lines[twin] if twin is not None else None
        text = describe_reason(reasons[0], twin_line, detail)
        return QuarantineRow(
            self.lines[index], raw.encode(), tuple(reasons), None,
            message_for(self.lines[index], None, text), duplicate_of=twin_line, detail=detail,
        )  # fmt: skip
