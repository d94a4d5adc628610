"""The curation pipeline: raw chat JSONL in; a versioned dataset, quarantine and manifest out.

The input is read once. Admitted records go to a spill file in the staging directory, so the
corpus never sits in memory; what stays in memory per record is a few small fields.
1. read -> JSON -> schema, label and quality rules -> PII scrub -> exact dedup -> answer scan;
   prompts go into the LSH index and their words into the trigger counts.
2. near-duplicate groups, conflicting answers and golden leakage, over LSH-flagged rows only.
3. trigger n-grams (a spill pass only when candidates exist), split, augmentation, and a final
   spill pass writing the dataset and the quarantine rows of everything removed after step 1.
Every input line ends up kept or in ``quarantine.jsonl``, and ``_finish`` checks the sum.
"""

from __future__ import annotations

import gc
import multiprocessing
import shutil
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from training import poison
from training.augment import SourceInfo, augment, select_sources
from training.curate_config import CurateConfig
from training.dedup import CandidateIndex, UnionFind, near_pairs, similarity_text
from training.errors import TrainingError
from training.leakage import GoldenPrompts
from training.manifest import (
    DATASET,
    MANIFEST,
    QUARANTINE,
    DatasetSink,
    build_manifest,
    promote,
    staging_dir,
    stratified_split,
    write_json_atomic,
)
from training.pii import PII_TYPES
from training.quarantine import (
    REASONS,
    QuarantineRow,
    QuarantineWriter,
    describe_reason,
    merge_by_line,
    message_for,
)
from training.reader import LineReader, RawLine, Spill
from training.schema import Admission, Admitted, Example, SchemaIssue
from training.teacher import Teacher

_BATCH = 4096
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
) -> dict[str, Any]:
    """Run the pipeline; ``out`` appears complete or not at all. Returns the manifest."""
    reader = LineReader(input_path, max_line_bytes=config.read.max_line_bytes)
    if config.augment.n > 0 and teacher is None:
        raise TrainingError("augmentation requested (augment.n > 0) but no teacher was given")
    staging = staging_dir(out)
    # The run keeps a few small objects per record alive until the end; the cyclic collector
    # would rescan them all, ever more slowly, and there are no cycles to find.
    collecting = gc.isenabled()
    gc.disable()
    try:
        manifest = _Run(config, staging, golden, teacher, progress or NoProgress()).run(reader)
        promote(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if collecting:
            gc.enable()
    return manifest


class _Run:
    def __init__(
        self,
        config: CurateConfig,
        staging: Path,
        golden: GoldenPrompts | None,
        teacher: Teacher | None,
        progress: Progress,
    ) -> None:
        self.cfg = config
        self.staging = staging
        self.golden = golden
        self.teacher = teacher
        self.progress = progress
        self.admission = Admission(config)
        self.spill = Spill(staging / ".spill.jsonl")
        # Prompt similarity texts and answer keys of unique records, for the passes that need
        # nothing else (near-dup detail, triggers): small rows, cheap to re-read.
        self.prompts = Spill(staging / ".prompts.jsonl")
        self.golden_n = len(golden.texts) if golden else 0
        thresholds = [config.dedup.threshold] + ([config.leakage.threshold] if golden else [])
        self.index = CandidateIndex(config.dedup, min(thresholds))
        self.golden_sims = [similarity_text(t) for t in golden.texts] if golden else []
        self.index.add(self.golden_sims)
        self.triggers = poison.TriggerStats(config.poison.trigger)
        # Per admitted record, by spill index. ``unique`` lists the non-exact-dup records in
        # order; the LSH key of unique[k] is golden_n + k.
        self.lines: list[int] = []
        self.twin: list[int] = []
        self.keys: list[str | None] = []
        self.system: list[int] = []
        self.labels: list[str | None] = []
        self.tags: list[tuple[str, ...]] = []
        self.ids: list[str] = []
        self.unique: list[int] = []
        self.seen: dict[tuple[str, str | None], int] = {}
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
        }

    def run(self, reader: LineReader) -> dict[str, Any]:
        early = self.staging / ".quarantine-early.jsonl"
        spill = self.spill
        with QuarantineWriter(early) as rejects:
            self.progress.stage("read", reader.size)
            batch: list[str] = []
            read = reported = 0
            for outcome in _admitted(reader, self.admission, self.cfg.read.workers):
                read += 1
                if isinstance(outcome, QuarantineRow):
                    rejects.write(outcome)
                elif self._admit(outcome, spill, batch) and len(batch) >= _BATCH:
                    self.index.add(batch)
                    batch = []
                if read % 2048 == 0:
                    self.progress.advance(reader.bytes_read - reported)
                    reported = reader.bytes_read
            self.index.add(batch)
            self.progress.advance(reader.bytes_read - reported)
        spill.close()
        self.prompts.close()
        self.stats.update(read=read, input_sha256=reader.sha256, input_bytes=reader.bytes_read)
        self.stats["input_path"] = str(reader.path)
        self._near_duplicates()
        self._answer_flags()
        self._trigger_ngrams()
        return self._finish(early, rejects)

    def _admit(self, a: Admitted, spill: Spill, batch: list[str]) -> bool:
        """Record an admitted line; True when it is unique (its prompt joined ``batch``)."""
        index = len(self.lines)
        self.lines.append(a.line or 0)
        self.stats["labels_before"][a.example.label or "<none>"] += 1
        if a.pii:
            self.stats["pii_records"] += 1
            self.stats["pii"].update(a.pii)
        twin = self.seen.get(a.exact_key)
        if twin is not None:
            self.twin.append(twin)
            self.keys.append(None)
            self.labels.append(None)
            self.ids.append("")
            self.system.append(0)
            self.tags.append(())
            spill.write({"i": index, "line": a.line, "raw": a.raw, "dup": twin})
            return False
        self.seen[a.exact_key] = index
        self.twin.append(-1)
        self._remember(index, a)
        if a.answer_key is not None:
            self.triggers.add(a.similarity.split(), a.answer_key)
        batch.append(a.similarity)
        spill.write(_spill_row(index, a))
        self.prompts.write({"i": index, "k": a.answer_key, "s": a.similarity})
        return True

    def _remember(self, index: int, a: Admitted) -> None:
        self.keys.append(a.answer_key)
        self.system.append(hash(a.system))
        self.labels.append(a.example.label)
        tags = a.example.metadata.get("tags", ())
        self.tags.append(tuple(tags) if isinstance(tags, list | tuple) else ())
        self.ids.append(a.id)
        self.unique.append(index)
        if a.flags:
            self.flags[index] = a.flags

    def _near_duplicates(self) -> None:
        self.progress.stage("near-duplicates", None)
        g = self.golden_n
        flagged = [int(k) - g for k in self.index.flags().nonzero()[0] if k >= g]
        rows = [self.unique[k] for k in flagged]
        prompts = {r["i"]: r["s"] for r in self.prompts.rows(set(rows))}
        texts = self.golden_sims + [prompts[i] for i in rows]
        order = [f"\0{case}" for case in (self.golden.ids if self.golden else ())]
        order += [f"{self.ids[i]}\t{self.labels[i] or ''}" for i in rows]
        union = UnionFind(len(rows))
        limits = [self.cfg.dedup.threshold] + ([self.cfg.leakage.threshold] if g else [])
        pairs = near_pairs(texts, order, self.cfg.dedup, self.index.bands, limits)
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
        answers = {r["i"]: r["messages"][-1][1] for r in self.spill.rows(free)} if free else {}
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

    def _trigger_ngrams(self) -> None:
        policy = self.cfg.poison.triggers
        self.stats["triggers"] = []
        if policy == "off":
            return

        def records() -> Iterator[tuple[int, list[str], str, str]]:
            self.progress.stage("trigger n-grams", None)
            for record in self.prompts.rows():
                if record["k"] is not None:
                    index = record["i"]
                    yield index, record["s"].split(), record["k"], self.ids[index]

        found, flagged, summary = poison.detect_triggers(self.triggers, records)
        self.stats["triggers"] = [t.__dict__ for t in found]
        self.stats["trigger_search"] = summary
        for index, gram in sorted(flagged.items()):
            self._flag([index], "trigger_ngram", policy, trigger=gram)

    def _finish(self, early: Path, rejects: QuarantineWriter) -> dict[str, Any]:
        removed = {i for i, reasons in self.removed.items() if reasons}
        survivors = [i for i in self.unique if i not in removed]
        split = stratified_split(
            {i: self.ids[i] for i in survivors},
            {i: self.labels[i] for i in survivors},
            self.cfg.split.validation_fraction,
            self.cfg.split.seed,
        )
        synthetic, augment_summary = self._augment(survivors, split)
        sink = DatasetSink(self.staging)
        late = self.staging / ".quarantine-late.jsonl"
        self.progress.stage("write", len(self.lines))
        with QuarantineWriter(late) as writer:
            for record in self.spill.rows():
                self.progress.advance()
                index = record["i"]
                if "dup" in record or index in removed:
                    writer.write(self._quarantine_row(record))
                else:
                    sink.add(split[index], record["id"], record["messages"], record["label"],
                             record["source"], record["meta"])  # fmt: skip
        for row in synthetic:
            sink.add("train", *row)
        merge_by_line([early, late], self.staging / QUARANTINE)
        sink.save(self.staging / DATASET)
        for path in (early, late, self.spill.path, self.prompts.path):
            path.unlink()
        stages = Counter(rejects.by_stage) + Counter(writer.by_stage)
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
            reasons=Counter(rejects.by_reason) + Counter(writer.by_reason),
            sink=sink,
            after=Counter(self.labels[i] or "<none>" for i in survivors),
            warnings=self.warnings,
            golden=self.golden,
            augment=augment_summary,
            bands=self.index.bands,
        )
        write_json_atomic(manifest, self.staging / MANIFEST)
        return manifest

    def _quarantine_row(self, record: dict[str, Any]) -> QuarantineRow:
        index = record["i"]
        twin = record.get("dup", self.pointer.get(index))
        reasons = ["exact_duplicate"] if "dup" in record else list(self.removed[index])
        if twin is not None:
            # The twin was kept unless it was removed later; then this line shares its fate.
            reasons += [r for r in self.removed.get(twin, ()) if r not in reasons]
        reasons.sort(key=_ORDER.__getitem__)
        detail = dict(self.detail.get(index, {}))
        twin_line = self.lines[twin] if twin is not None else None
        text = describe_reason(reasons[0], twin_line, detail)
        return QuarantineRow(
            self.lines[index], record["raw"].encode(), tuple(reasons), None,
            message_for(self.lines[index], None, text), duplicate_of=twin_line, detail=detail,
        )  # fmt: skip

    def _augment(
        self, survivors: list[int], split: Mapping[int, str]
    ) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        cfg = self.cfg.augment
        if cfg.n == 0 or self.teacher is None:
            return [], {"n": 0}
        train = [i for i in survivors if split[i] == "train"]
        infos = [SourceInfo(i, self.labels[i], self.tags[i]) for i in train]
        sources = select_sources(
            infos,
            edge_tags=cfg.edge_tags,
            under_represented=cfg.under_represented,
            max_sources=cfg.max_sources,
        )
        self.progress.stage("augment", None)
        rows, summary = augment(
            _SpillCorpus(self),
            self.teacher,
            sources,
            n=cfg.n,
            seed=cfg.seed,
            labels=self.cfg.schema.labels,
            cap=int(cfg.max_ratio * len(survivors)),
        )
        return rows, {"n": cfg.n, **summary}


def _spill_row(index: int, a: Admitted) -> dict[str, Any]:
    return {
        "i": index,
        "line": a.line,
        "raw": a.raw,
        "id": a.id,
        "messages": a.example.messages,
        "label": a.example.label,
        "source": a.example.source,
        "meta": a.example.metadata,
        "sim": a.similarity,
    }


_CHUNK = 1024
_worker_admission: Admission | None = None


def _admitted(
    lines: Iterable[RawLine], admission: Admission, workers: int
) -> Iterator[Admitted | QuarantineRow]:
    """Admission outcomes in input order; with ``workers`` > 1, chunks of lines are admitted in
    worker processes, at most ``2 * workers`` chunks in flight so the input is still streamed."""
    if workers <= 1:
        for raw in lines:
            yield admission.line(raw)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(admission.cfg,)) as pool:
        pending: deque[Any] = deque()
        chunk: list[RawLine] = []
        for raw in lines:
            chunk.append(raw)
            if len(chunk) == _CHUNK:
                pending.append(pool.apply_async(_admit_chunk, (chunk,)))
                chunk = []
                if len(pending) >= 2 * workers:
                    yield from pending.popleft().get()
        if chunk:
            pending.append(pool.apply_async(_admit_chunk, (chunk,)))
        while pending:
            yield from pending.popleft().get()


def _start_worker(config: CurateConfig) -> None:
    global _worker_admission
    gc.disable()
    _worker_admission = Admission(config)


def _admit_chunk(chunk: list[RawLine]) -> list[Admitted | QuarantineRow]:
    assert _worker_admission is not None
    return [_worker_admission.line(raw) for raw in chunk]


class _SpillCorpus:
    """Augmentation's view of the run: kept examples from the spill, and the same admission,
    exact-dup and LSH near-dup/leakage checks as the input went through."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def examples(self, indices: Sequence[int]) -> list[tuple[int, Example, str, int | None]]:
        rows = {r["i"]: r for r in self.run.spill.rows(set(indices))}
        return [(i, _example(rows[i]), rows[i]["id"], rows[i]["line"]) for i in indices]

    def admit(self, record: Mapping[str, Any]) -> tuple[str | None, Any]:
        result = self.run.admission.record(dict(record), None, orjson.dumps(record))
        if isinstance(result, SchemaIssue):
            return result.reasons[0], None
        if result.flags:
            return result.flags[0][0], None
        if result.exact_key in self.run.seen:
            return "exact_duplicate", None
        self.run.seen[result.exact_key] = -1
        return None, result

    def near_reasons(self, admitted: Sequence[Any]) -> list[str | None]:
        run, cfg = self.run, self.run.cfg
        sims = [a.similarity for a in admitted]
        first = run.index.size
        run.index.add(sims)
        g, corpus_end = run.golden_n, run.golden_n + len(run.unique)
        flagged = [int(k) for k in run.index.flags().nonzero()[0]]
        rows = [run.unique[k - g] for k in flagged if g <= k < corpus_end]
        new = [k - first for k in flagged if k >= first]
        corpus = {r["i"]: r["s"] for r in run.prompts.rows(set(rows))}
        texts = run.golden_sims + [corpus[i] for i in rows] + [sims[j] for j in new]
        order = [f"\0{t}" for t in run.golden_sims] + [run.ids[i] for i in rows]
        order += [admitted[j].id for j in new]
        offset = g + len(rows)
        reasons: list[str | None] = [None] * len(admitted)
        earlier: dict[int, list[int]] = defaultdict(list)
        limits = [cfg.dedup.threshold, cfg.leakage.threshold]
        for a, b, similarity in near_pairs(texts, order, cfg.dedup, run.index.bands, limits):
            if b < offset:
                continue
            j = new[b - offset]
            if a < g:
                if similarity >= cfg.leakage.threshold:
                    reasons[j] = "golden_leakage"
                continue
            if similarity < cfg.dedup.threshold:
                continue
            if a < offset:
                if hash(admitted[j].system) == run.system[rows[a - g]]:
                    reasons[j] = reasons[j] or "near_duplicate"
            else:
                i = new[a - offset]
                earlier[max(i, j)].append(min(i, j))
        for j in range(len(admitted)):
            # Among paraphrases, the first of a near-duplicate pair that survives is kept.
            if reasons[j] is None and any(reasons[i] is None for i in earlier[j]):
                reasons[j] = "near_duplicate"
        return reasons

    def row(self, admitted: Any) -> tuple[Any, ...]:
        example = admitted.example
        return (admitted.id, example.messages, example.label, example.source, example.metadata)


def _example(row: Mapping[str, Any]) -> Example:
    messages = tuple((role, content) for role, content in row["messages"])
    return Example(messages, row["label"], row["source"], row["meta"])
