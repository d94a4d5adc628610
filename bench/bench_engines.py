"""Gate throughput on this CPU: the vllm engine vs the hf engine (batched) vs a naive loop.

    OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 \\
        /work/vllm-venv/bin/python bench/bench_engines.py --cases 1000 --naive 40 \\
        [--adapter DIR] [--engines hf,vllm,naive] [--json OUT.json]

Workload: ``--cases`` label cases built from the shipped golden set (its rank-mode cases, cycled;
each copy gets a distinct ``(#n)`` prefix so no two prompts are identical and no engine can reuse
an earlier answer), ranked over the four labels, for the base model and for the candidate adapter
(a LoRA: ``--adapter``, else a seeded random LoRA r=8). Engines, one process, one after another:

- ``vllm``: :class:`qlgate_pytest.engines.vllm_engine.VLLMEngine` (its defaults: float32 on a CPU
  without native bf16, the CPU LoRA fix applied where verified, prompts shared through the prefix
  cache, roles in one call where the start-up probe shows that is clean);
- ``hf``: :class:`qlgate_pytest.engines.hf.HFEngine` (its defaults: float32 on CPU, batch 8; one
  prompt pass with the KV cache shared by the label continuations);
- ``vllm-stock``: the same engine without qlgate's CPU LoRA fix (``vllm_patch=False``): vLLM's own
  CPU LoRA path, where ranking falls back to a greedy answer of 8 tokens parsed to a label;
- ``naive``: what a plain pytest harness does: per case, ``model.generate`` (greedy, 8 new tokens,
  batch 1, torch's default threads) on a peft model, then a label parsed from the text. It is
  timed on ``--naive`` cases spread evenly over the workload and extrapolated per case to
  ``--cases`` (printed as such).

``hf`` and ``naive`` are timed in ``--rounds`` interleaved rounds (round r: hf ranks block r of
the cases, both roles; then the naive loop runs its share of its cases, both roles), because this
shared machine's speed drifts by up to 2x within minutes: a ratio of two engines timed half an
hour apart measured the drift as much as the engines. vLLM (4 GB, its own worker process) runs
on its own, before them.

Throughput is cases/s over the timed calls (engine start and warm-up excluded, printed apart).
Labels picked are scored against the cases' expected labels as a sanity check (accuracy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engines"))

from qlgate_pytest.engines.base import EngineConfig, Message, RankRequest, Role  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One measured (engine, role) pass."""

    engine: str
    role: Role
    cases: int
    seconds: float
    accuracy: float
    start_s: float
    extrapolated_from: int | None = None

    @property
    def per_s(self) -> float:
        return self.cases / self.seconds


def build_cases(n: int) -> tuple[list[RankRequest], list[str]]:
    """``n`` distinct rank requests from the golden set, and their expected labels."""
    from qlgate_core.cases import load_golden_set
    from qlgate_pytest.driver import rank_request

    golden = [c for c in load_golden_set(ROOT / "golden").cases if c.effective_mode == "rank"]
    requests, expected = [], []
    for i in range(n):
        case = golden[i % len(golden)]
        base = rank_request(case)
        *head, last = base.messages
        messages = (*head, Message(last.role, f"(#{i}) {last.content}"))
        requests.append(RankRequest(f"{case.id}#{i}", messages, base.labels))
        expected.append(str(case.expected))
    return requests, expected


def _accuracy(picked: Sequence[str], expected: Sequence[str]) -> float:
    return sum(p == e for p, e in zip(picked, expected, strict=True)) / len(expected)


class Timed:
    """Seconds and picked labels accumulated over the rounds of one (engine, role)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.picked: list[str] = []
        self.expected: list[str] = []

    def add(self, seconds: float, picked: Sequence[str], expected: Sequence[str]) -> None:
        self.seconds += seconds
        self.picked += picked
        self.expected += expected


ROLES: tuple[Role, Role] = ("baseline", "candidate")


def start_engine(factory: Callable[[EngineConfig], Any], config: EngineConfig) -> tuple[Any, float]:
    started = time.perf_counter()
    engine = factory(config)
    engine.warm_up()
    return engine, time.perf_counter() - started


def rank_block(
    name: str, engine: Any, role: Role, requests: list[RankRequest]
) -> tuple[float, list[str]]:
    """One timed rank call; errors stop the benchmark."""
    began = time.perf_counter()
    got = engine.rank(role, requests)
    seconds = time.perf_counter() - began
    errors = [r.error for r in got if r.error]
    if errors:
        raise SystemExit(f"{name} {role}: {len(errors)} errors, first: {errors[0]}")
    return seconds, [str(r.best) for r in got]


def run_engine(
    name: str,
    factory: Callable[[EngineConfig], Any],
    config: EngineConfig,
    requests: list[RankRequest],
    expected: list[str],
) -> list[Row]:
    """Start an engine, warm it up, then time one rank call per role over every request."""
    engine, start_s = start_engine(factory, config)
    rows = []
    try:
        for role in ROLES:
            seconds, picked = rank_block(name, engine, role, requests)
            rows.append(
                Row(name, role, len(requests), seconds, _accuracy(picked, expected), start_s)
            )
            print(f"  {name:6s} {role:9s} {rows[-1].per_s:7.2f} cases/s", flush=True)
    finally:
        engine.close()
    return rows


class Naive:
    """Per case ``generate`` at batch 1 (8 new tokens) and a label parsed from the text."""

    def __init__(self, config: EngineConfig) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        # torch's default thread count (from OMP_NUM_THREADS), as the engines get: a plain
        # harness does not tune threads, and pinning it to one core would flatter the engines.
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.base_model))
        base = AutoModelForCausalLM.from_pretrained(str(config.base_model), dtype=torch.float32)
        adapter = config.adapters["candidate"]
        assert adapter is not None
        self.model: Any = PeftModel.from_pretrained(base, str(adapter)).eval()
        self.start_s = time.perf_counter() - started

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> tuple[float, list[str]]:
        from qlgate_core.scoring import normalize_label

        picked = []
        began = time.perf_counter()
        for request in requests:
            ids: Any = self.tokenizer.apply_chat_template(
                [m.as_dict() for m in request.messages], add_generation_prompt=True,
                return_tensors="pt", return_dict=True,
            )  # fmt: skip
            with self.torch.inference_mode():
                if role == "baseline":
                    with self.model.disable_adapter():
                        out = self.model.generate(**ids, max_new_tokens=8, do_sample=False)
                else:
                    out = self.model.generate(**ids, max_new_tokens=8, do_sample=False)
            new = out[0, ids["input_ids"].shape[1] :]
            text = str(self.tokenizer.decode(new, skip_special_tokens=True))
            picked.append(normalize_label(text, request.labels) or "")
        return time.perf_counter() - began, picked


def run_interleaved(
    config: EngineConfig,
    requests: list[RankRequest],
    expected: list[str],
    names: Sequence[str],
    naive_cases: int,
    rounds: int,
) -> list[Row]:
    """``hf`` and/or ``naive`` timed in alternating rounds over the same blocks of cases."""
    from qlgate_pytest.engines.hf import create as hf_create

    engines: dict[str, Any] = {}
    start_s: dict[str, float] = {}
    if "hf" in names:
        engines["hf"], start_s["hf"] = start_engine(hf_create, config)
    if "naive" in names:
        naive = Naive(config)
        engines["naive"], start_s["naive"] = naive, naive.start_s
    # The naive loop's cases: evenly spaced over the workload, so they have its mix.
    step = max(1, len(requests) // max(1, naive_cases))
    naive_ids = list(range(0, len(requests), step))[:naive_cases]
    timed = {(name, role): Timed() for name in engines for role in ROLES}
    try:
        for r in range(rounds):
            block = list(range(len(requests)))[r::rounds]
            for name, engine in engines.items():
                ids = block if name != "naive" else naive_ids[r::rounds]
                if not ids:
                    continue
                for role in ROLES:
                    chosen = [requests[i] for i in ids]
                    if name == "naive":
                        seconds, picked = engine.rank(role, chosen)
                    else:
                        seconds, picked = rank_block(name, engine, role, chosen)
                    timed[name, role].add(seconds, picked, [expected[i] for i in ids])
            done = ", ".join(
                f"{n} {len(t.picked) / t.seconds:.2f}" for (n, role), t in timed.items()
                if role == "baseline" and t.seconds
            )  # fmt: skip
            print(f"  round {r + 1}/{rounds}: cases/s so far (base) {done}", flush=True)
    finally:
        if "hf" in engines:
            engines["hf"].close()
    rows = []
    for (name, role), t in timed.items():
        count = len(t.picked)
        seconds = t.seconds * len(requests) / count  # the naive loop: extrapolated per case
        note = count if count < len(requests) else None
        rows.append(Row(name, role, len(requests), seconds, _accuracy(t.picked, t.expected),
                        start_s[name], note))  # fmt: skip
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    """The markdown table: cases/s, LoRA cost per engine, speed-up over the naive loop."""
    naive = {r.role: r.per_s for r in rows if r.engine == "naive"}
    base = {r.engine: r.per_s for r in rows if r.role == "baseline"}
    head = (
        "| engine | role | cases | time (s) | cases/s | LoRA cost | x naive | accuracy "
        "| start (s) |"
    )
    out = [head, "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cost = f"{base[r.engine] / r.per_s:.2f}x" if r.role == "candidate" else "-"
        vs = f"{r.per_s / naive[r.role]:.1f}" if r.role in naive else "-"
        note = f" (extrapolated from {r.extrapolated_from})" if r.extrapolated_from else ""
        out.append(
            f"| {r.engine} | {r.role} | {r.cases} | {r.seconds:.1f}{note} | {r.per_s:.2f} | "
            f"{cost} | {vs} | {r.accuracy:.3f} | {r.start_s:.1f} |"
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=40, help="cases timed for the naive loop")
    parser.add_argument("--adapter", type=Path, help="candidate LoRA (default: seeded random r=8)")
    parser.add_argument(
        "--engines", default="vllm,hf,naive", help="comma-separated: vllm, vllm-stock, hf, naive"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of hf/naive")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from qlgate_pytest.engines.vllm_engine import create as vllm_create
    from training.models import resolve_base_model

    adapter = args.adapter
    if adapter is None:
        from vllm_helpers import make_random_adapter

        adapter = make_random_adapter(Path(tempfile.mkdtemp()) / "random-r8")
    # Roles in separate vLLM calls, so each role's time is its own (a mixed call would serve
    # the second role from the first call).
    config = EngineConfig(
        base_model=resolve_base_model("embedded"),
        adapters={"candidate": adapter, "baseline": None},
        extra={"vllm_role_batching": "separate"},
    )
    names = args.engines.split(",")
    unknown = sorted(set(names) - {"vllm", "vllm-stock", "hf", "naive"})
    if unknown:
        parser.error(f"--engines: unknown {unknown}; choose from vllm, vllm-stock, hf, naive")
    requests, expected = build_cases(args.cases)
    print(f"{len(requests)} cases x 4 labels, adapter {adapter}", flush=True)
    rows: list[Row] = []
    for name in names:
        if name == "vllm":
            rows += run_engine("vllm", vllm_create, config, requests, expected)
        elif name == "vllm-stock":  # vLLM's own CPU LoRA path: no fix, so rank by generation
            stock = dataclasses.replace(config, extra={**config.extra, "vllm_patch": False})
            rows += run_engine("vllm-stock", vllm_create, stock, requests, expected)
    together = [n for n in names if n in ("hf", "naive")]
    if together:
        naive_cases = min(args.naive, len(requests))
        rows += run_interleaved(config, requests, expected, together, naive_cases, args.rounds)
    print("\n".join(table(rows)))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))


if __name__ == "__main__":
    main()
