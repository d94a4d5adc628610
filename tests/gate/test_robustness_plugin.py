"""``--perturb N`` and ``--max-flip-rate`` in gate runs: perturbed copies of each label case run
through the same engine and cache, flip rates per slice for both roles, never counted as cases.

The registered engine knows the original tickets: its candidate answers them right and answers
anything else (every perturbed copy) with another label, so its flip rate is exactly 1; its
baseline always says "account" and never flips.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Adapters = Any

BRITTLE_CONFTEST = """
from pathlib import Path

from qlgate_pytest.engines import Generation, Ranking, register_engine

TRUTH = {truth!r}


class Brittle:
    name = "brittle"

    def __init__(self, config):
        pass

    def describe(self):
        return {{"engine": "brittle"}}

    def warm_up(self):
        pass

    def close(self):
        pass

    def rank(self, role, requests):
        Path("calls.txt").open("a").write(f"{{role}} {{len(requests)}}\\n")
        out = []
        for r in requests:
            truth = TRUTH.get(r.messages[-1].content)
            if role == "baseline":
                best = "account"
            elif truth is not None:
                best = truth
            else:
                best = next(lab for lab in r.labels if lab != TRUTH[r.key.split("~")[0] + "!"])
            scores = {{lab: (0.0 if lab == best else -5.0) for lab in r.labels}}
            out.append(Ranking(r.key, scores, best, 1.0, 5, 1))
        return out

    def generate(self, role, requests):
        return [Generation(r.key, "ok", 1.0, 5, 1) for r in requests]


register_engine("brittle", Brittle)
"""

TICKETS = [
    ("t0", "I was charged twice for my order.", "billing", ["core"]),
    ("t1", "My parcel from Berlin is late.", "shipping", ["core"]),
    ("t2", "Reset the password for Alice please.", "account", ["core", "edge"]),
    ("t3", "I want to send back the kettle.", "returns", ["edge"]),
]


@pytest.fixture
def brittle_project(
    gate_project: pytest.Pytester, golden_writer: Callable[..., Path]
) -> pytest.Pytester:
    cases = [
        {"id": cid, "prompt": text, "expected": label, "tags": tags}
        for cid, text, label, tags in TICKETS
    ]
    golden_writer(gate_project.path, cases)
    truth = {text: label for _, text, label, _ in TICKETS}
    truth.update({f"{cid}!": label for cid, _, label, _ in TICKETS})
    gate_project.makeconftest(BRITTLE_CONFTEST.format(truth=truth))
    return gate_project


def run(project: pytest.Pytester, adapter: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = project.runpytest(
        f"--candidate={adapter}", "--engine=brittle", "--gate-report=out/report.json", *args
    )
    report: dict[str, Any] = json.loads((project.path / "out" / "report.json").read_text())
    return int(result.ret), report


def test_flip_rates_per_slice_and_roles(
    brittle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    ret, report = run(brittle_project, tiny_adapters.perturbed, "--perturb=3", "--min-f1-gain=-1")
    assert ret == 0, report["reasons"]
    robust = report["robustness"]
    assert robust["perturbations_per_case"] == 3 and robust["cases"] == 4
    assert robust["overall"]["candidate"] == {
        "rate": 1.0, "flips": 12, "total": 12, "cases": 4, "cases_flipped": 4, "upper": 1.0
    }  # fmt: skip
    assert robust["confidence"] == 0.95
    # no flip in 12 baseline answers: 1 - 0.025 ** (1 / 12), the 95% Clopper-Pearson bound
    assert robust["overall"]["baseline"]["upper"] == pytest.approx(0.2646, abs=1e-4)
    assert robust["overall"]["baseline"]["rate"] == 0.0
    assert robust["by_slice"]["edge"]["candidate"]["total"] == 6
    assert set(robust["by_kind"]) <= {"casing", "whitespace", "punctuation", "typo", "entity"}
    # perturbed copies are not golden cases: F1 is over the four originals only
    assert report["metrics"]["n_cases"] == 4 and len(report["cases"]) == 4
    assert report["metrics"]["candidate"]["macro_f1"] == 1.0
    # batched with the golden requests: one rank call per role, 4 x (1 + 3) requests each
    calls = (brittle_project.path / "calls.txt").read_text().split("\n")
    assert sorted(c for c in calls if c) == ["baseline 16", "candidate 16"]


def test_max_flip_rate_turns_the_gate_red_naming_the_slice(
    brittle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    ret, report = run(
        brittle_project,
        tiny_adapters.perturbed,
        "--perturb=2",
        "--max-flip-rate=0.5",
        "--min-f1-gain=-1",
    )
    assert ret == pytest.ExitCode.TESTS_FAILED
    reasons = report["reasons"]
    assert any(r.startswith("robustness overall: candidate flip rate 1.000") for r in reasons)
    assert any("95% upper bound 1.000, exceeds --max-flip-rate 0.500" in r for r in reasons)
    assert any("robustness slice 'edge'" in r and "baseline 0.000" in r for r in reasons)
    # perturbed answers go through the cache too: a re-run asks the engine nothing
    (brittle_project.path / "calls.txt").unlink()
    ret, again = run(
        brittle_project, tiny_adapters.perturbed, "--perturb=2", "--max-flip-rate=0.5",
        "--min-f1-gain=-1",
    )  # fmt: skip
    assert again["cache"]["hits"] == 2 * 4 * 3 and again["cache"]["misses"] == 0
    assert not (brittle_project.path / "calls.txt").exists()
    assert again["robustness"] == report["robustness"]
