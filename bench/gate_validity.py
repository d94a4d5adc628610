"""Gate validity by simulation: false-accept rate and power of our rule vs the reference rule.

    OMP_NUM_THREADS=1 python bench/gate_validity.py [--trials 400] [--sizes 100,500,2000]

Cases are drawn with known true accuracies and fed to ``qlgate_pytest.gate.decide`` itself
(10,000 paired bootstrap resamples, 95% confidence, min gain 0): the decision is the real one.
Beside it, in the same run and on the same simulated outcomes, the reference rule
``macro-F1(candidate) >= macro-F1(baseline) + threshold`` for threshold 0 and 0.02.

Model of a golden set (the assumptions; say them wherever the numbers are quoted):
- 4 balanced classes (the sample task); a wrong answer is a uniformly random other label, so
  the population macro-F1 of a role equals its accuracy.
- Paired outcomes share a per-case difficulty: role r answers case i correctly iff
  ``sqrt(rho) * z_i + sqrt(1 - rho) * eps_ri < Phi^-1(acc_r)`` with z, eps standard normal.
  ``rho`` is the latent correlation of the two roles' errors: 0 = independent, 1 = identical.
  A fine-tuned adapter and its base model share many hard cases; the script prints the
  resulting discordant-pair rate so rho can be matched to a real gate report (b + c over n).
- Scenarios: "no better" (acc_c = acc_b = 0.70), "+5 points" (0.75 vs 0.70), and
  "unchanged" (the candidate's outputs are the baseline's: an adapter that did nothing).

Speed: with the gate's fixed seed the bootstrap's resample counts depend only on the number of
cases, so they are computed once per size and reused (memoised ``stats._resample_counts``);
every decision is otherwise computed in full. Stated here because it is the only shortcut.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from scipy.stats import norm

from qlgate_core import stats
from qlgate_pytest.gate import (
    CaseResult,
    RoleResult,
    Selection,
    Thresholds,
    decide,
)

LABELS = ("account", "billing", "returns", "shipping")
REFERENCE_THRESHOLDS = (0.0, 0.02)


@dataclass(frozen=True)
class Scenario:
    name: str
    acc_candidate: float
    acc_baseline: float
    unchanged: bool = False


def simulate(n: int, sc: Scenario, rho: float, rng: np.random.Generator) -> list[CaseResult]:
    """One golden set's paired outcomes under the shared-difficulty model."""
    expected = np.arange(n) % len(LABELS)
    z = rng.standard_normal(n)

    def role(acc: float) -> tuple[np.ndarray, np.ndarray]:
        latent = math.sqrt(rho) * z + math.sqrt(1 - rho) * rng.standard_normal(n)
        correct = latent < norm.ppf(acc)
        wrong = (expected + rng.integers(1, len(LABELS), n)) % len(LABELS)
        return correct, np.where(correct, expected, wrong)

    cc, cp = role(sc.acc_candidate)
    bc, bp = (cc, cp) if sc.unchanged else role(sc.acc_baseline)
    out = []
    for i in range(n):
        e = LABELS[expected[i]]
        cand = RoleResult(LABELS[cp[i]], LABELS[cp[i]], bool(cc[i]), 10.0, 1)
        base = RoleResult(LABELS[bp[i]], LABELS[bp[i]], bool(bc[i]), 10.0, 1)
        out.append(CaseResult(f"c{i}", ("core",), False, 1.0, "label", e, cand, base))
    return out


def run_cell(
    n: int, sc: Scenario, rho: float, trials: int, thresholds: Thresholds, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(
        [seed, n, int(rho * 1000), int(sc.acc_candidate * 1000), int(sc.unchanged)]
    )
    ours = 0
    ref = dict.fromkeys(REFERENCE_THRESHOLDS, 0)
    discordant = 0.0
    for _ in range(trials):
        results = simulate(n, sc, rho, rng)
        v = decide(results, thresholds, Selection(n, n))
        ours += v.passed
        c, b = v.metrics["candidate"]["macro_f1"], v.metrics["baseline"]["macro_f1"]
        for t in REFERENCE_THRESHOLDS:
            ref[t] += c >= b + t
        discordant += (v.delta["b"] + v.delta["c"]) / n
    out = {"ours": ours / trials, "discordant": discordant / trials}
    out.update({f"ref{t}": k / trials for t, k in ref.items()})
    return out


def true_macro_f1_gain(sc: Scenario, rho: float) -> float:
    """Population gain, estimated on one very large simulated set (checks the model's claim
    that macro-F1 equals accuracy here)."""
    results = simulate(200_000, sc, rho, np.random.default_rng(12345))
    e = [r.expected for r in results]
    c = stats.macro_f1(e, [r.candidate.predicted for r in results if r.candidate])
    b = stats.macro_f1(e, [r.baseline.predicted for r in results if r.baseline])
    return c - b


def bootstrap_speed(n: int = 2000, resamples: int = 10_000, naive: int = 200) -> str:
    """The vectorised paired bootstrap against a per-resample loop (macro-F1 recomputed for
    each resample), per resample, in this process."""
    rng = np.random.default_rng(1)
    e = [LABELS[i] for i in rng.integers(0, 4, n)]
    c = [x if rng.random() < 0.8 else LABELS[0] for x in e]
    b = [x if rng.random() < 0.7 else LABELS[1] for x in e]
    t0 = time.perf_counter()
    stats.paired_bootstrap_macro_f1(e, c, b, resamples=resamples, seed=7)
    fast = (time.perf_counter() - t0) / resamples
    idx = rng.integers(0, n, size=(naive, n))
    t0 = time.perf_counter()
    for row in idx:
        rows = row.tolist()
        ee = [e[i] for i in rows]
        stats.macro_f1(ee, [c[i] for i in rows]) - stats.macro_f1(ee, [b[i] for i in rows])
    slow = (time.perf_counter() - t0) / naive
    return (
        f"paired bootstrap, {n} cases x {resamples} resamples: {fast * resamples:.2f} s "
        f"vectorised; per-resample loop {slow * 1000:.1f} ms/resample ({naive} timed) -> "
        f"{slow / fast:.0f}x faster"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--sizes", default="100,500,2000")
    p.add_argument("--rhos", default="0,0.5,0.8,0.95")
    p.add_argument("--base-acc", type=float, default=0.70)
    p.add_argument("--gain", type=float, default=0.05)
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed-only", action="store_true", help="only time the bootstrap")
    args = p.parse_args(argv)
    # Timed before the resample counts are memoised below, so this is the gate's real cost.
    print(bootstrap_speed())
    if args.speed_only:
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    rhos = [float(r) for r in args.rhos.split(",")]
    thresholds = Thresholds(resamples=args.resamples)
    # The gate's seed is fixed, so resample counts are a function of n alone: compute once.
    stats._resample_counts = functools.lru_cache(maxsize=1)(stats._resample_counts)
    scenarios = [
        Scenario("no better", args.base_acc, args.base_acc),
        Scenario(f"+{args.gain * 100:.0f} points", args.base_acc + args.gain, args.base_acc),
    ]
    for sc in scenarios:
        for rho in rhos:
            gain = true_macro_f1_gain(sc, rho)
            print(f"true macro-F1 gain, {sc.name}, rho={rho}: {gain:+.4f} (200,000 cases)")
    header = (
        "| cases | rho | discordant | scenario | ours: accept | "
        + " | ".join(f"ref t={t}: accept" for t in REFERENCE_THRESHOLDS)
        + " |"
    )
    print(
        f"trials per cell: {args.trials}; base accuracy {args.base_acc}; "
        f"ours = decide() with {args.resamples} resamples, 95% CI, min gain 0"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    start = time.perf_counter()
    decisions = 0
    for n in sizes:
        for sc in [*scenarios, Scenario("unchanged", args.base_acc, args.base_acc, True)]:
            for rho in rhos if not sc.unchanged else [rhos[0]]:
                t0 = time.perf_counter()
                trials = args.trials if not sc.unchanged else max(20, args.trials // 10)
                r = run_cell(n, sc, rho, trials, thresholds, args.seed)
                decisions += trials
                refs = " | ".join(f"{r[f'ref{t}']:.1%}" for t in REFERENCE_THRESHOLDS)
                rho_cell = "-" if sc.unchanged else f"{rho}"
                print(
                    f"| {n} | {rho_cell} | {r['discordant']:.1%} | {sc.name} | "
                    f"{r['ours']:.1%} | {refs} |",
                    flush=True,
                )
                print(f"#   {trials} trials in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - start
    print(
        f"{decisions} decisions in {wall:.0f} s "
        f"({wall / decisions * 1000:.0f} ms per decision, simulation included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
