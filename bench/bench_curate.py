"""Curation throughput: our pipeline vs a naive baseline on the same synthetic corpus.

    python bench/bench_curate.py [--records 100000] [--repeat 1] [--keep DIR] [--compare TREE]

The corpus (seeded): ticket-routing records with 10% duplicates (exact, re-cased, re-spaced, one
word changed), 5% carrying PII (email, phone, card, IBAN, IP, API key) and 5% malformed (bad JSON,
blank, arrays, schema errors, low quality). No augmentation.

The baseline is what the reference design does, written straightforwardly: line by line,
``json.loads`` + pydantic ``model_validate`` + quality filter + regex PII replacement (no
checksums) + exact dedup on a hash of the raw text, writing kept records as JSONL. It has no
near-dup, poisoning, leakage, split, quarantine or manifest, so the ratio is conservative.

Each side runs in its own child process (so peak RSS is its own, from ``ru_maxrss``); the time is
measured inside the child around the work only (imports excluded). Prints records/s for both,
the ratio, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEM = (
    "You are a support ticket router for Northwind Goods. Classify the customer's message into "
    "exactly one of: account, billing, returns, shipping. Reply with the label only."
)
ITEMS = (
    "kettle",
    "jacket",
    "lamp",
    "desk chair",
    "coffee machine",
    "rug",
    "teapot",
    "heater",
    "bike light",
    "backpack",
    "blender",
    "mirror",
    "toaster",
    "duvet",
    "speaker",
    "boots",
    "sofa cushion",
    "fan",
    "raincoat",
    "frying pan",
    "bookshelf",
    "alarm clock",
    "scarf",
    "garden hose",
    "printer",
    "yoga mat",
    "wine glasses",
    "curtains",
    "drill",
    "headphones",
)
TEMPLATES = {
    "shipping": ("Where is my order {o}? The {i} was due {d} and tracking has not moved.",
                 "My parcel with the {i} says out for delivery since {d}, order {o}.",
                 "Can you ship order {o} to my office instead, the {i} is heavy?",
                 "The courier left a card on {d} but I never got the {i} from {o}.",
                 "Tracking for {o} says delivered {d} but there is no {i} anywhere.",
                 "Do you deliver to {c}? I want to order a {i} for my sister."),
    "billing": ("I was charged twice for the {i} on order {o}, please refund one payment.",
                "My invoice for {o} shows the wrong VAT amount for the {i}.",
                "The promo code did not apply to the {i} when I paid on {d}, order {o}.",
                "Why is there a pending charge from {d} for order {o}? I paid for the {i} already.",
                "Can I pay for the {i} in instalments? It costs {p} pounds.",
                "My card was declined on {d} when buying the {i}, but the bank says it is fine."),
    "returns": ("The {i} from order {o} arrived cracked, I want to send it back.",
                "How do I return the {i}? Order {o} came on {d} and it is the wrong colour.",
                "I dropped the {i} from {o} at the post office on {d}, when do I get my refund?",
                "Can I exchange the {i} from order {o} for a bigger size?",
                "The {i} stopped working after a week, can I get a return label for {o}?",
                "You sent me a {i} instead of the {j} I ordered ({o}), I want to swap it."),
    "account": ("I cannot log in since {d}, my password reset email never comes.",
                "Please change the email on my profile, my last order was {o}.",
                "Someone changed my password on {d}, I think my account was hacked.",
                "Unsubscribe me from the newsletter, I only bought the {i} once.",
                "How do I delete my account? I moved to {c}.",
                "The two-factor code goes to my old phone since {d}, please update it."),
}  # fmt: skip
FILLERS = ("Thanks in advance.", "This is the third time I am writing.", "Please help quickly.",
           "I have been a customer for years.", "Sent from my phone, sorry for typos.",
           "My neighbour had the same problem last month.", "Kind regards, Sam.",
           "I looked on the website but found nothing.", "Can someone call me back?",
           "It was a birthday present.", "Not happy about this at all.", "Cheers!",
           "Your chat bot could not help me.", "I am away from next Tuesday.",
           "Best wishes, Priya.", "Hope you can sort this out.", "Many thanks, Tom.",
           "I read the FAQ twice.", "My husband ordered it on my account.",
           "This has never happened before.", "I need it for a party on Saturday.",
           "Please reply by email rather than phone.", "Regards, Alex.",
           "I will leave a review once this is fixed.", "The app keeps crashing too.",
           "I already spoke to someone yesterday.", "Sorry for the long message.",
           "Everything else was great.", "I am quite upset.", "No rush, just curious.",
           "Please escalate this.", "Apologies if this is the wrong address.",
           "Thanks, Maria.", "I tried twice already.", "Let me know what you need from me.",
           "The last delivery was fine.", "It is urgent.", "Hello team,", "Hi there,",
           "Good morning,")  # fmt: skip
COUNTRIES = ("Ireland", "France", "Norway", "Spain", "Germany", "Canada", "Italy", "Poland")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "last week")
PII = (
    "mail me at {n}.smith{k}@example.com",
    "call +44 20 7946 0{k:03d}",
    "my card is 4111 1111 1111 1111",
    "IBAN GB82 WEST 1234 5698 7654 32",
    "my router is 192.168.{k}.{n}",
    "the key sk-proj-{k}abcdefghijklmnopqrstuvwx{n}",
)
MALFORMED = (
    '{"messages": [{"role": "user", "content": "truncated',
    "",
    '["billing", "a JSON array"]',
    '{"messages": [{"role": "user", "content": "no answer"}], "metadata": {"quality_score": 0.9}}',
    '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}',
    '{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
    '{"messages": "not a list", "metadata": {"quality_score": 0.9}}',
)


def make_corpus(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    written: list[str] = []
    with path.open("w", encoding="utf-8") as handle:
        for n in range(records):
            roll = rng.random()
            if roll < 0.05:
                line = rng.choice(MALFORMED)
                if rng.random() < 0.3:
                    line = _record(rng, n, quality=round(rng.uniform(0.1, 0.79), 2))
            elif roll < 0.15 and written:
                line = _duplicate(rng, rng.choice(written))
            else:
                line = _record(rng, n, pii=roll < 0.20)
                written.append(line)
            handle.write(line + "\n")


def _record(rng: random.Random, n: int, *, pii: bool = False, quality: float | None = None) -> str:
    label = rng.choice(tuple(TEMPLATES))
    text = rng.choice(TEMPLATES[label]).format(
        o=f"NW-{rng.randint(10000, 99999)}",
        i=rng.choice(ITEMS),
        j=rng.choice(ITEMS),
        d=rng.choice(DAYS),
        c=rng.choice(COUNTRIES),
        p=rng.randint(20, 900),
    )
    opening, *closing = rng.sample(FILLERS, rng.randint(2, 4))
    text = " ".join([opening, text, *closing])
    if pii:
        text += " " + rng.choice(PII).format(n=n % 250, k=rng.randint(1, 250))
    record = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ],
        "metadata": {
            "label": label,
            "quality_score": quality if quality is not None else round(rng.uniform(0.8, 1.0), 2),
            "source": "bench",
        },
    }
    return json.dumps(record)


def _duplicate(rng: random.Random, line: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return line
    record = json.loads(line)
    user = record["messages"][1]
    if kind == 1:
        user["content"] = user["content"].upper()
    elif kind == 2:
        user["content"] = user["content"].replace(" ", "  ")
    else:
        words = user["content"].split()
        user["content"] = " ".join([*words[:-1], "please"])
    return json.dumps(record)


def run_ours(corpus: Path, out: Path, workers: int = 1) -> float:
    import datasets  # noqa: F401  (imported lazily by the pipeline; imports are not timed)

    from training.curate import curate
    from training.curate_config import CurateConfig, ReadConfig, SchemaConfig, replace

    config = replace(
        CurateConfig(),
        read=ReadConfig(workers=workers),
        schema=SchemaConfig(labels=tuple(TEMPLATES)),
    )
    started = time.perf_counter()
    curate(corpus, out, config)
    return time.perf_counter() - started


def run_naive(corpus: Path, out: Path) -> float:
    """Reference-style curation: per line json + pydantic + regex scrub + exact dedup."""
    import hashlib
    import re
    from typing import Literal

    from pydantic import BaseModel, ValidationError

    class Message(BaseModel):
        role: Literal["system", "user", "assistant"]
        content: str

    class Meta(BaseModel):
        quality_score: float | None = None
        label: str | None = None
        source: str | None = None

    class Record(BaseModel):
        messages: list[Message]
        metadata: Meta | None = None

    patterns = [
        (re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"), "<EMAIL>"),
        (re.compile(r"\+?\d[\d -]{8,}\d"), "<PHONE>"),
        (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b"), "<IBAN>"),
        (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<IP>"),
        (re.compile(r"\bsk-[\w-]{20,}"), "<SECRET>"),
    ]
    started = time.perf_counter()
    seen: set[str] = set()
    out.mkdir(parents=True, exist_ok=True)
    with corpus.open(encoding="utf-8") as src, (out / "kept.jsonl").open("w") as dst:
        for line in src:
            try:
                record = Record.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                continue
            meta = record.metadata
            if meta is None or meta.quality_score is None or meta.quality_score < 0.8:
                continue
            for message in record.messages:
                for pattern, placeholder in patterns:
                    message.content = pattern.sub(placeholder, message.content)
            key = hashlib.sha256(record.model_dump_json().encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            dst.write(record.model_dump_json() + "\n")
    return time.perf_counter() - started


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child(which: str, corpus: Path, out: Path) -> None:
    cpu = _cpu_seconds()
    if which.startswith("ours"):
        seconds = run_ours(corpus, out, workers=int(which.split("-")[1]))
    else:
        seconds = run_naive(corpus, out)
    cpu = _cpu_seconds() - cpu
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": peak_kib / 1024,
                      "worker_peak_mib": worker_kib / 1024}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the corpus and outputs here")
    parser.add_argument(
        "--workers", default="1,2", help="our pipeline's worker counts to run (comma-separated)"
    )
    parser.add_argument(
        "--compare", type=Path, help="another checkout (an older commit) to run in turn with this"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.corpus, args.out)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-curate-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "raw.jsonl"
    make_corpus(corpus, args.records)
    size_mb = corpus.stat().st_size / 1e6
    cpus = len(os.sched_getaffinity(0))
    print(f"corpus: {args.records} records, {size_mb:.1f} MB, {cpus} CPUs available")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    sides = ["naive", *(f"ours-{n}" for n in args.workers.split(","))]
    # With --compare, each side runs in this tree and then in the other, round after round, so
    # both see the same machine (its speed drifts by a third within minutes).
    trees = {"this": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for attempt in range(args.repeat):
        for which in sides:
            for name, tree in trees.items():
                out = work / f"{name}-{which}-{attempt}"
                command = [sys.executable, str(tree / "bench" / "bench_curate.py"), "--child",
                           which, "--corpus", str(corpus), "--out", str(out)]  # fmt: skip
                done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=tree)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault((name, which), []).append(result)
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for name in trees:
        if len(trees) > 1:
            print(f"--- {name} tree ({trees[name]})")
        _report(args.records, sides, {w: results[(name, w)] for w in sides})
    if len(trees) > 1:
        for which in sides[1:]:
            rounds = [b["seconds"] / a["seconds"] for a, b in zip(
                results[("this", which)], results[("compare", which)], strict=True)]  # fmt: skip
            print(f"this / compare, {which}: records/s {' '.join(f'{r:.2f}x' for r in rounds)} "
                  "per round")  # fmt: skip
    manifest = json.loads((work / f"this-{sides[-1]}-0" / "manifest.json").read_text())
    print("ours counts:", json.dumps(manifest["counts"]))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _report(records: int, sides: list[str], results: dict[str, list[dict[str, float]]]) -> None:
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
    for which in sides:
        label = "naive baseline" if which == "naive" else f"qlgate {which.split('-')[1]} worker(s)"
        r = best[which]
        rate = records / r["seconds"]
        cpu_us = 1e6 * r["cpu"] / records
        per_record = 1024 * 1024 * r["peak_mib"] / records
        print(f"{label:20} {r['seconds']:7.2f} s  {rate:9,.0f} records/s  "
              f"CPU {cpu_us:6.1f} us/record  peak RSS {r['peak_mib']:6.0f} MiB "
              f"({per_record:,.0f} B/record), workers {r['worker_peak_mib']:.0f} MiB")  # fmt: skip
        if len(results[which]) > 1:
            rates = sorted(records / run["seconds"] for run in results[which])
            print(f"{'':20} every run: {', '.join(f'{x:,.0f}' for x in rates)} records/s "
                  f"(median {statistics.median(rates):,.0f})")  # fmt: skip
    for which in sides[1:]:
        ratio = best["naive"]["seconds"] / best[which]["seconds"]
        cpu_ratio = best["naive"]["cpu"] / best[which]["cpu"]
        print(f"ratio {which} / naive: records/s {ratio:.2f}x, CPU per record {1 / cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
