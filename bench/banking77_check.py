"""Real-data check: fine-tune the embedded model on a Banking77 subset and gate it on held-out data.

Reads the human-labelled Banking77 CSVs (CC BY 4.0) from ``../shared/data/banking77`` (or
``--data``); nothing is copied into the repository. The whole user flow runs as a user would run
it, each step as its own process:

    python -m training curate  -> python -m training train  -> pytest --candidate

It prints base vs tuned macro-F1 on the held-out cases and the gate's verdict.

    OMP_NUM_THREADS=2 python bench/banking77_check.py --classes 6 --train-per-class 40 \
        --test-per-class 25 --max-steps 40
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77"


def _read(path: Path) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            by_label[row["category"]].append(row["text"].strip())
    return by_label


def _system_prompt(labels: list[str]) -> str:
    return (
        "You are a banking assistant's intent router. Classify the customer's message into "
        f"exactly one of: {', '.join(labels)}. Reply with the label only."
    )


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    print(f"  {' '.join(cmd[:4])} ... -> exit {code} in {elapsed:.0f} s (log: {log})")
    if code not in (0, 1) or (code == 1 and "pytest" not in cmd):
        sys.exit(f"step failed: {' '.join(cmd)}; see {log}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qlgate-banking77"))
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        sys.exit(f"Banking77 not found at {args.data} (pass --data)")

    rng = random.Random(args.seed)
    train, test = _read(args.data / "train.csv"), _read(args.data / "test.csv")
    labels = sorted(rng.sample(sorted(train), args.classes))
    system = _system_prompt(labels)
    args.work.mkdir(parents=True, exist_ok=True)

    raw = args.work / "raw.jsonl"
    with raw.open("w", encoding="utf-8") as handle:
        for label in labels:
            for text in rng.sample(train[label], args.train_per_class):
                record = {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": label},
                    ],
                    "metadata": {"label": label, "quality_score": 1.0, "source": "banking77"},
                }
                handle.write(json.dumps(record) + "\n")

    golden = args.work / "golden"
    golden.mkdir(exist_ok=True)
    cases = [
        # Case ids allow [A-Za-z0-9_.-] only; some intent names carry a '?'.
        {"id": f"b77-{re.sub(r'[^A-Za-z0-9_.-]', '', label)}-{i:03d}", "prompt": text,
         "expected": label}
        for label in labels
        for i, text in enumerate(rng.sample(test[label], args.test_per_class))
    ]
    doc = {
        "defaults": {
            "system": system,
            "labels": labels,
            "scorer": "label",
            "mode": "rank",
            "tags": ["banking77"],
        },
        "cases": cases,
    }
    (golden / "banking77.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    py = sys.executable
    # A gate runs only against a locked golden set (golden/golden.lock); this one is new.
    subprocess.check_call(
        [py, "-m", "qlgate_pytest", "lock-golden", "--golden", str(golden)],
        stdout=subprocess.DEVNULL,
    )
    data_dir, adapter = args.work / "data", args.work / "adapter"
    report = args.work / "gate-report.json"
    for stale in (data_dir, adapter):
        if stale.exists():
            subprocess.check_call(["rm", "-rf", str(stale)])
    print(f"Banking77 subset: {len(labels)} intents {labels}")
    print(f"  train lines {len(labels) * args.train_per_class}, held-out cases {len(cases)}")
    t_curate = _run(
        [py, "-m", "training", "curate", str(raw), "--out", str(data_dir), "--golden", str(golden)],
        args.work / "curate.log",
    )
    t_train = _run(
        [py, "-m", "training", "train", "--data", str(data_dir), "--out", str(adapter),
         "--config", str(ROOT / "configs" / "qlora.toml"), "--max-steps", str(args.max_steps)],
        args.work / "train.log",
    )  # fmt: skip
    t_gate = _run(
        [py, "-m", "pytest", str(golden), f"--candidate={adapter}", f"--golden={golden}",
         f"--gate-report={report}", "-q", "-p", "no:cacheprovider"],
        args.work / "gate.log",
    )  # fmt: skip
    result = json.loads(report.read_text(encoding="utf-8"))
    metrics, delta = result["metrics"], result["delta"]
    print(
        f"base macro-F1 {metrics['baseline']['macro_f1']:.3f}  "
        f"tuned macro-F1 {metrics['candidate']['macro_f1']:.3f}  "
        f"gain {delta['macro_f1']:+.3f} (CI {delta['ci_low']:+.3f}..{delta['ci_high']:+.3f})  "
        f"verdict {'PASS' if result['passed'] else 'FAIL'}"
    )
    for reason in result["reasons"]:
        print(f"  reason: {reason}")
    print(f"times: curate {t_curate:.0f} s, train {t_train:.0f} s, gate {t_gate:.0f} s")


if __name__ == "__main__":
    main()
