"""Augmentation inside a curation run: the pipeline's side of ``augment.Corpus``.

Kept examples come back from the spill; synthetic records go through the same admission,
exact-dup and LSH near-dup/leakage checks as the input did.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from training.augment import SourceInfo, augment, select_sources
from training.curate_read import system_key
from training.dedup import near_pairs
from training.schema import Admitted, Example, SchemaIssue

if TYPE_CHECKING:
    from training.curate import _Run


def run_augmentation(
    run: _Run, survivors: list[int], split: Mapping[int, str]
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Paraphrase selected train-split survivors; the accepted rows and the summary."""
    cfg = run.cfg.augment
    if cfg.n == 0 or run.teacher is None:
        return [], {"n": 0}
    train = [i for i in survivors if split[i] == "train"]
    infos = [SourceInfo(i, run.labels[i], run.tags[i]) for i in train]
    sources = select_sources(
        infos,
        edge_tags=cfg.edge_tags,
        under_represented=cfg.under_represented,
        max_sources=cfg.max_sources,
    )
    run.progress.stage("augment", None)
    rows, summary = augment(
        SpillCorpus(run),
        run.teacher,
        sources,
        n=cfg.n,
        seed=cfg.seed,
        labels=run.cfg.schema.labels,
        cap=int(cfg.max_ratio * len(survivors)),
    )
    return rows, {"n": cfg.n, **summary}


class SpillCorpus:
    """Augmentation's view of the run."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def examples(self, indices: Sequence[int]) -> list[tuple[int, Example, str, int | None]]:
        rows = {r["i"]: r for r in self.run.spill.rows(set(indices))}
        return [(i, spill_example(rows[i]), rows[i]["id"], rows[i]["line"]) for i in indices]

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

    def near_reasons(self, admitted: Sequence[Admitted]) -> list[str | None]:
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
                if system_key(admitted[j].system) == run.system[rows[a - g]]:
                    reasons[j] = reasons[j] or "near_duplicate"
            else:
                i = new[a - offset]
                earlier[max(i, j)].append(min(i, j))
        for j in range(len(admitted)):
            # Among paraphrases, the first of a near-duplicate pair that survives is kept.
            if reasons[j] is None and any(reasons[i] is None for i in earlier[j]):
                reasons[j] = "near_duplicate"
        return reasons

    def row(self, admitted: Admitted) -> tuple[Any, ...]:
        example = admitted.example
        return (admitted.id, example.messages, example.label, example.source, example.metadata)


def spill_example(row: Mapping[str, Any]) -> Example:
    messages = tuple((turn["role"], turn["content"]) for turn in row["turns"])
    return Example(messages, row["label"], row["source"], orjson.loads(row["mj"]))
