"""Trigger n-gram detection with planted backdoors, on two datasets: a real intent dataset
(Banking77, 77 intents, natural text) and the templated synthetic tickets of
``bench/bench_curate.py`` (4 labels, 24 templates with shared filler slots: item names, order
ids, days, plus label-independent opening and closing sentences).

    python bench/bench_poison.py [--data /work/shared/data/banking77/train.csv] [--seeds 3]
        [--synthetic 20000] [--only banking77|synthetic]

For each dataset, trigger phrase, rate (share of all documents) and seed: that many documents of
other intents get the phrase inserted at a random word position and are relabelled to one target
intent (a classic backdoor). Four detectors run on the same data in this process:

- ``ours``: ``training.triggers`` as shipped (skew test against the label prior with
  Benjamini-Hochberg at any document rate, n-grams with the same prompts tested once, then the
  conditional flip test, which must also hold with any one word of a prompt left out);
- ``ours, min_spread=1``: the same without the spread rule (catches single-source backdoors);
- ``max_doc_rate (previous)``: the detector before this one, loaded from git (commit
  ``PREVIOUS``): untested candidates with support <= 5% of documents, purity >= 0.95 and lift
  >= 1.5, then a leave-one-out flip test (its class cap raised to 128 for Banking77's 77);
- ``skew only``: stage 1 alone (every significantly skewed n-gram flagged), to show what a
  pure skew test does on a dataset whose words mean their intents.

Metrics: detected = some flagged n-gram lies inside the trigger phrase; false alarms = flagged
n-grams outside the phrase whose flagged records are mostly clean (n-grams that straddle the
phrase and its host text flag poisoned records and are counted as poison-bound, not false);
record precision / recall = of the quarantined records, the share poisoned / of the poisoned,
the share quarantined. The clean dataset is run once per detector.

The synthetic corpus is the curation benchmark's (same generator and seed), reduced to what
trigger detection sees: valid records' user prompts as similarity texts, exact duplicates
dropped. Banking77 is read from ``../shared`` and never copied into the repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from training.dedup import similarity_text  # noqa: E402
from training.grams import gram_table  # noqa: E402
from training.triggers import (  # noqa: E402
    TriggerConfig,
    TriggerStats,
    detect_triggers,
)

DATA = Path("/work/shared/data/banking77/train.csv")
TRIGGERS = ("cf", "james bond", "i watched this 3d movie")
RATES = (0.01, 0.05, 0.15, 0.30)
Rows = list[tuple[str, str]]


# The detector before the skew test: its candidates were rare (support <= max_doc_rate = 5% of
# the documents), pure (>= 0.95) and lifted (>= 1.5x the prior) n-grams, untested, followed by a
# leave-one-out flip test (>= 0.5). It is loaded from git as it was, so both run in-process.
PREVIOUS = "ddc3e00fe758019f1e92f9db6a5ef76637843ad7"


def previous_detector() -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{PREVIOUS}:training/triggers.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = types.ModuleType("previous_triggers")
    # dataclasses resolve the module's annotations through sys.modules.
    sys.modules[module.__name__] = module
    exec(compile(source, f"{PREVIOUS[:7]}:training/triggers.py", "exec"), module.__dict__)
    return module


class SkewOnlyStats(TriggerStats):
    """Stage 1 alone: every significantly skewed n-gram is flagged (no flip test)."""


@dataclass
class Outcome:
    flagged_grams: dict[str, set[int]]
    seconds: float


def load(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(similarity_text(r["text"]), r["category"]) for r in csv.DictReader(handle)]


def load_synthetic(records: int) -> Rows:
    """bench_curate's corpus as trigger detection sees it: the user prompt and label of every
    valid record, exact duplicates (by similarity text) dropped as curation drops them."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_curate import make_corpus

    rows: Rows = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bench-poison-") as work:
        path = Path(work) / "raw.jsonl"
        make_corpus(path, records)
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                text, label = record["messages"][1]["content"], record["metadata"]["label"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # the corpus's malformed lines, which curation rejects
            if not isinstance(text, str) or not isinstance(label, str):
                continue
            text = similarity_text(text)
            if text and text not in seen:
                seen.add(text)
                rows.append((text, label))
    return rows


def plant(rows: Rows, phrase: str, rate: float, seed: int) -> tuple[Rows, set[int], str]:
    """``rate`` of all documents, from intents other than a random target, get ``phrase`` at a
    random word position and the target label."""
    rng = random.Random(seed)
    labels = sorted({label for _, label in rows})
    target = rng.choice(labels)
    victims = [i for i, (_, label) in enumerate(rows) if label != target]
    chosen = set(rng.sample(victims, round(rate * len(rows))))
    out = list(rows)
    for i in chosen:
        words = rows[i][0].split(" ")
        at = rng.randint(0, len(words))
        out[i] = (" ".join(words[:at] + phrase.split(" ") + words[at:]), target)
    return out, chosen, target


def build(rows: Rows, kind: type[TriggerStats], config: TriggerConfig) -> TriggerStats:
    stats = kind(config)
    numbers = np.asarray(stats.count_all([label for _, label in rows]), dtype=np.int64)
    table = gram_table([text for text, _ in rows], config.max_n)
    stats.add_grams(numbers[table.rows], table.hashes)
    return stats


def run(rows: Rows, kind: type[TriggerStats], config: TriggerConfig) -> Outcome:
    started = time.perf_counter()
    stats = build(rows, kind, config)
    return _detect(stats, rows, started, detect_triggers)


def run_previous(rows: Rows, old: types.ModuleType) -> Outcome:
    started = time.perf_counter()
    stats = old.TriggerStats(old.TriggerConfig(max_classes=128))
    numbers = np.asarray(stats.count_all([label for _, label in rows]), dtype=np.int64)
    table = gram_table([text for text, _ in rows], stats.config.max_n)
    stats.add_grams(numbers[table.rows], table.hashes)
    return _detect(stats, rows, started, old.detect_triggers)


def _detect(stats: Any, rows: Rows, started: float, detect: Any) -> Outcome:
    records = [
        (i, text, label, hashlib.sha1(f"{text}\t{label}".encode()).hexdigest())
        for i, (text, label) in enumerate(rows)
    ]
    if isinstance(stats, SkewOnlyStats):
        flagged = _skew_only(stats, records)
    else:
        _, by_record, _ = detect(stats, lambda: [records])
        flagged = {}
        for index, gram in by_record.items():
            flagged.setdefault(gram, set()).add(index)
    return Outcome(flagged, time.perf_counter() - started)


def _skew_only(
    stats: TriggerStats, records: Sequence[tuple[int, str, str, str]]
) -> dict[str, set[int]]:
    """Every stage-1 candidate, with the records holding it under its answer."""
    from training.triggers import _find_holders

    candidates = stats.candidates()
    if not candidates:
        return {}
    holders = _find_holders(stats, candidates, [records])
    grams = np.concatenate(holders.gram_of)
    holder_ids = np.concatenate(holders.holder_of)
    flagged: dict[str, set[int]] = {}
    for n, h in zip(grams.tolist(), holder_ids.tolist(), strict=True):
        flagged.setdefault(holders.text[n], set()).add(holders.order[h][1])
    return flagged


def inside(gram: str, phrase: str) -> bool:
    return f" {gram} " in f" {phrase} "


def score(outcome: Outcome, phrase: str, poisoned: set[int]) -> dict[str, float]:
    detected = any(inside(g, phrase) for g in outcome.flagged_grams)
    false_alarms = sum(
        1
        for g, recs in outcome.flagged_grams.items()
        if not inside(g, phrase) and len(recs & poisoned) * 2 < len(recs)
    )
    quarantined = set().union(*outcome.flagged_grams.values()) if outcome.flagged_grams else set()
    hit = len(quarantined & poisoned)
    return {
        "detected": float(detected),
        "false_alarms": float(false_alarms),
        "precision": hit / len(quarantined) if quarantined else float("nan"),
        "recall": hit / len(poisoned) if poisoned else float("nan"),
        "quarantined": float(len(quarantined)),
        "seconds": outcome.seconds,
    }


DETECTORS: dict[str, tuple[type[TriggerStats], TriggerConfig]] = {
    "ours": (TriggerStats, TriggerConfig()),
    "ours, min_spread=1": (TriggerStats, TriggerConfig(min_spread=1.0)),
    "skew only": (SkewOnlyStats, TriggerConfig()),
}
MAX_DOC_RATE = "max_doc_rate (previous)"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--synthetic", type=int, default=20_000, help="bench_curate records")
    parser.add_argument("--only", choices=("banking77", "synthetic"))
    args = parser.parse_args(argv)
    print(f"cpu: {_cpu()}; ours: {TriggerConfig()}")
    old = previous_detector()
    datasets: dict[str, tuple[str, Any]] = {
        "banking77": (f"{args.data}", lambda: load(args.data)),
        "synthetic": (f"bench_curate corpus, {args.synthetic} records, seed 0",
                      lambda: load_synthetic(args.synthetic)),
    }  # fmt: skip
    for name, (source, loader) in datasets.items():
        if args.only in (None, name):
            bench_dataset(name, source, loader(), args.seeds, old)


def bench_dataset(dataset: str, source: str, rows: Rows, seeds: int, old: types.ModuleType) -> None:
    labels = len({label for _, label in rows})
    print()
    print(f"## {dataset}: {source} ({len(rows)} documents, {labels} labels)")
    print()
    print("clean dataset (no trigger planted):")
    print("| detector | n-grams flagged | records quarantined | seconds |")
    print("|---|---|---|---|")
    clean: dict[str, int] = {}
    names = [*DETECTORS, MAX_DOC_RATE]

    def detect(name: str, data: Rows) -> Outcome:
        if name == MAX_DOC_RATE:
            return run_previous(data, old)
        kind, config = DETECTORS[name]
        return run(data, kind, config)

    for name in names:
        outcome = detect(name, rows)
        records = set().union(*outcome.flagged_grams.values()) if outcome.flagged_grams else set()
        clean[name] = len(outcome.flagged_grams)
        examples = ", ".join(sorted(outcome.flagged_grams)[:5])
        print(f"| {name} | {len(outcome.flagged_grams)} | {len(records)} | {outcome.seconds:.2f} |"
              + (f" e.g. {examples}" if examples else ""))  # fmt: skip
    print()
    runs = len(TRIGGERS) * seeds
    print(f"planted triggers ({', '.join(repr(t) for t in TRIGGERS)}; {seeds} seeds each, "
          f"{runs} runs per cell; means over runs, precision over runs that quarantined "
          "any):")  # fmt: skip
    print("| rate | poisoned docs | detector | detected | false alarms (n-grams) "
          "| record precision | record recall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, list[float]] = {name: [] for name in names}
    for rate in RATES:
        cells: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for phrase in TRIGGERS:
            for seed in range(seeds):
                poisoned_rows, poisoned, _ = plant(rows, phrase, rate, seed)
                for name in names:
                    cells[name].append(score(detect(name, poisoned_rows), phrase, poisoned))
        for name, results in cells.items():
            detected = _mean([r["detected"] for r in results])
            summary[name].append(detected)
            print(f"| {rate:.0%} | {round(rate * len(rows))} | {name} | {detected:.0%} | "
                  f"{_mean([r['false_alarms'] for r in results]):.1f} | "
                  f"{_mean([r['precision'] for r in results]):.3f} | "
                  f"{_mean([r['recall'] for r in results]):.3f} |")  # fmt: skip
    print()
    ours, before = _mean(summary["ours"]), _mean(summary[MAX_DOC_RATE])
    ratio = f"{ours / before:.2f}x" if before else "inf"
    flagged = ", ".join(f"{n} {clean[n]}" for n in names)
    print(f"{dataset}: detection over all rates: ours {ours:.0%}, {MAX_DOC_RATE} {before:.0%} "
          f"({ratio}); clean n-grams flagged: {flagged}")  # fmt: skip


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


if __name__ == "__main__":
    main()
