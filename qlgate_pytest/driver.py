"""Runs every selected case through the engine, for every role, before any item is scored.

Engines are fed whole request lists (one ``rank`` and one ``generate`` call per role), so they
batch; a test item then only looks up its case's result. Failures never escape as tracebacks:
an engine error becomes the ``error`` of each affected case, which turns the gate red with the
message as the reason.

A :class:`GenerationCache` sits between the driver and the engine. The default remembers
nothing; the content-addressed cache (``gen_cache.py``, keyed by weights, adapter, tokenizer,
template, prompt and decoding) plugs in here without touching engines.

With ``perturb=N`` each label case's perturbed copies (``perturb.py``) join the same per-role
engine calls as the golden requests (so they batch with them, and go through the cache); their
predictions come back separately as :class:`~qlgate_pytest.perturb.RobustnessCase` and never
enter the case results that F1 is computed from.

A per-request deadline (``--request-timeout``) is enforced here, not in engines: each engine call
runs in a watchdog thread allowed ``timeout x batches`` seconds, and any result whose own latency
exceeds the deadline is an error. A call that overruns is abandoned (a thread cannot be killed)
and no further call is sent to that engine in this run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from qlgate_core import scoring
from qlgate_core.cases import GoldenCase
from qlgate_pytest.engines.base import (
    Engine,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)
from qlgate_pytest.gate import CaseResult, RoleResult
from qlgate_pytest.perturb import (
    RobustnessCase,
    RoleRobustness,
    case_seed,
    perturb_conversation,
)

Request = GenerateRequest | RankRequest
Result = Generation | Ranking
_Req = TypeVar("_Req", GenerateRequest, RankRequest)
_Res = TypeVar("_Res", Generation, Ranking)


class GenerationCache(Protocol):
    """Where previously computed results can be found; ``None`` means compute it."""

    def lookup(self, role: Role, request: Request) -> Result | None: ...

    def store(self, role: Role, request: Request, result: Result) -> None: ...


class NoCache:
    """The default: every request goes to the engine."""

    def lookup(self, role: Role, request: Request) -> Result | None:
        return None

    def store(self, role: Role, request: Request, result: Result) -> None:
        return None


def messages_of(case: GoldenCase) -> tuple[Message, ...]:
    return tuple(Message(t["role"], t["content"]) for t in case.conversation())


def rank_request(case: GoldenCase) -> RankRequest:
    """The ranking request for a label case."""
    return RankRequest(case.id, messages_of(case), tuple(case.labels or ()))


def generate_request(case: GoldenCase) -> GenerateRequest:
    """The generation request for any case."""
    return GenerateRequest(case.id, messages_of(case), case.max_new_tokens)


@dataclass
class Deadline:
    """``--request-timeout`` for one run; ``hung`` is set once a call overran."""

    timeout_s: float | None = None
    batch_size: int = 8
    hung: str | None = field(default=None)
    # Run once, unguarded, before the first engine call: loading a lazy engine is not a
    # request, and must not eat the first request's deadline.
    before: Callable[[], object] | None = None

    def call(
        self, call: Callable[[Role, Sequence[_Req]], list[_Res]], role: Role, reqs: Sequence[_Req]
    ) -> list[_Res]:
        if self.hung is not None:
            raise RuntimeError(self.hung)
        if self.before is not None:
            prepare, self.before = self.before, None
            prepare()
        if self.timeout_s is None:
            return call(role, reqs)
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = call(role, reqs)
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        # Daemon: an abandoned call must not keep the process alive at exit.
        worker = threading.Thread(target=target, name="qlgate-engine-call", daemon=True)
        allowed = self.timeout_s * max(1, math.ceil(len(reqs) / max(1, self.batch_size)))
        worker.start()
        worker.join(allowed)
        if worker.is_alive():
            self.hung = (
                f"an earlier engine call overran --request-timeout {self.timeout_s:g}s; "
                "the engine was abandoned"
            )
            raise TimeoutError(
                f"{len(reqs)} request(s) not answered within {allowed:g}s "
                f"(--request-timeout {self.timeout_s:g}s per request)"
            )
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def late(self, latency_ms: float) -> str | None:
        if self.timeout_s is not None and latency_ms > self.timeout_s * 1000.0:
            return f"request took {latency_ms:.0f} ms, over --request-timeout {self.timeout_s:g}s"
        return None


def _through_cache(
    call: Callable[[Role, Sequence[_Req]], list[_Res]],
    role: Role,
    requests: Sequence[_Req],
    cache: GenerationCache,
    deadline: Deadline | None = None,
) -> dict[str, _Res | str]:
    """key -> result, or key -> error text when the whole call failed."""
    found: dict[str, _Res | str] = {}
    missing: list[_Req] = []
    for request in requests:
        hit = cache.lookup(role, request)
        if hit is None:
            missing.append(request)
        else:
            found[request.key] = hit  # type: ignore[assignment]
    if not missing:
        return found
    guard = deadline if deadline is not None else Deadline()
    try:
        results = guard.call(call, role, missing)
        if len(results) != len(missing):
            raise RuntimeError(f"engine returned {len(results)} results for {len(missing)}")
    except Exception as exc:  # the engine's failure is every affected case's error
        text = f"{role} engine call failed: {type(exc).__name__}: {exc}".splitlines()[0]
        found.update((r.key, text) for r in missing)
        return found
    for request, result in zip(missing, results, strict=True):
        late = guard.late(result.latency_ms) if result.error is None else None
        if late is not None:
            found[request.key] = f"{role}: {late}"
            continue  # a late answer is not cached: the next run must time it again
        found[request.key] = result
        if result.error is None:
            cache.store(role, request, result)
    return found


def _role_result(case: GoldenCase, result: Result) -> RoleResult:
    labels = case.labels
    if isinstance(result, Ranking):
        judged = scoring.score_output("label", result.best, case.expected, labels)
        return RoleResult(
            output=result.best,
            predicted=judged.predicted,
            correct=judged.correct,
            latency_ms=result.latency_ms,
            output_tokens=result.output_tokens,
            label_scores=dict(result.scores),
        )
    judged = scoring.score_output(case.scorer, result.text, case.expected, labels)
    return RoleResult(
        output=result.text,
        predicted=judged.predicted,
        correct=judged.correct,
        latency_ms=result.latency_ms,
        output_tokens=result.output_tokens,
    )


def _outcome(case: GoldenCase, role: Role, got: Result | str | None) -> RoleResult | str:
    if got is None:
        return f"{role}: the engine returned no result"
    if isinstance(got, str):
        return got
    if got.error is not None:
        return f"{role}: {got.error}"
    try:
        return _role_result(case, got)
    except ValueError as exc:
        return f"{role}: cannot score: {exc}"


PERTURBED = "~p"  # request key of perturbation i of case c: f"{c}~p{i}" (ids cannot hold "~")


@dataclass(frozen=True)
class RunOutput:
    """The golden cases' results and, with perturbations, each label case's predictions."""

    results: dict[str, CaseResult]
    robustness: dict[str, RobustnessCase]


def _perturbations(
    cases: Sequence[GoldenCase], n: int, seed: int
) -> dict[str, list[tuple[str, tuple[Message, ...]]]]:
    """case id -> [(kind, messages)] for each label case (other scorers have no label to flip)."""
    out: dict[str, list[tuple[str, tuple[Message, ...]]]] = {}
    if n <= 0:
        return out
    for case in cases:
        if case.scorer != "label":
            continue
        copies = perturb_conversation(case.conversation(), n, case_seed(case.id, seed))
        out[case.id] = [
            (p.kind, tuple(Message(m["role"], m["content"]) for m in msgs)) for p, msgs in copies
        ]
    return out


def _predicted(case: GoldenCase, got: Result | str | None) -> str | Exception | None:
    """The label a role gave a perturbed copy; an Exception carries why there is none."""
    if got is None or isinstance(got, str):
        return RuntimeError(got or "no result")
    if got.error is not None:
        return RuntimeError(got.error)
    text = got.best if isinstance(got, Ranking) else got.text
    try:
        return scoring.score_output("label", text, case.expected, case.labels).predicted
    except ValueError as exc:
        return exc


def run_cases(
    engine: Engine,
    cases: Sequence[GoldenCase],
    *,
    roles: Sequence[Role] = ("candidate", "baseline"),
    baseline_outcomes: Mapping[str, RoleResult] | None = None,
    cache: GenerationCache | None = None,
) -> dict[str, CaseResult]:
    """Every case's :class:`CaseResult`, keyed by case id.

    ``roles`` are the roles the engine runs. When the baseline comes from an earlier report,
    pass only ``("candidate",)`` and the report's outcomes as ``baseline_outcomes``.
    """
    return run_all(
        engine, cases, roles=roles, baseline_outcomes=baseline_outcomes, cache=cache
    ).results


def run_all(
    engine: Engine,
    cases: Sequence[GoldenCase],
    *,
    roles: Sequence[Role] = ("candidate", "baseline"),
    baseline_outcomes: Mapping[str, RoleResult] | None = None,
    cache: GenerationCache | None = None,
    perturb: int = 0,
    seed: int = 0,
    deadline: Deadline | None = None,
) -> RunOutput:
    """:func:`run_cases` plus ``perturb`` perturbed copies of each label case, in one batch."""
    store = cache if cache is not None else NoCache()
    guard = deadline if deadline is not None else Deadline()
    copies = _perturbations(cases, perturb, seed)
    ranked = [c for c in cases if c.effective_mode == "rank"]
    generated = [c for c in cases if c.effective_mode == "generate"]
    rank_reqs = [rank_request(c) for c in ranked] + [
        RankRequest(f"{c.id}{PERTURBED}{i}", msgs, tuple(c.labels or ()))
        for c in ranked
        for i, (_, msgs) in enumerate(copies.get(c.id, ()))
    ]
    gen_reqs = [generate_request(c) for c in generated] + [
        GenerateRequest(f"{c.id}{PERTURBED}{i}", msgs, c.max_new_tokens)
        for c in generated
        for i, (_, msgs) in enumerate(copies.get(c.id, ()))
    ]
    raw: dict[Role, dict[str, Result | str]] = {}
    for role in roles:
        got: dict[str, Result | str] = {}
        if rank_reqs:
            got.update(_through_cache(engine.rank, role, rank_reqs, store, guard))
        if gen_reqs:
            got.update(_through_cache(engine.generate, role, gen_reqs, store, guard))
        raw[role] = got
    out: dict[str, CaseResult] = {}
    robust: dict[str, RobustnessCase] = {}
    for case in cases:
        outcomes: dict[Role, RoleResult | None] = {"candidate": None, "baseline": None}
        errors: list[str] = []
        perturbed: dict[Role, RoleRobustness] = {}
        for role in roles:
            outcome = _outcome(case, role, raw[role].get(case.id))
            if isinstance(outcome, str):
                errors.append(outcome)
            else:
                outcomes[role] = outcome
            preds: list[str | None] = []
            for i, (kind, _) in enumerate(copies.get(case.id, ())):
                pred = _predicted(case, raw[role].get(f"{case.id}{PERTURBED}{i}"))
                if isinstance(pred, Exception):
                    # Fail closed: a perturbed request that failed is an error of its case.
                    errors.append(f"{role} perturbation {i} ({kind}): {pred}")
                    pred = None
                preds.append(pred)
            if case.id in copies and not isinstance(outcome, str):
                perturbed[role] = RoleRobustness(outcome.predicted, tuple(preds))
        if baseline_outcomes is not None and "baseline" not in roles:
            outcomes["baseline"] = baseline_outcomes.get(case.id)
        out[case.id] = case_result(case, outcomes["candidate"], outcomes["baseline"], errors)
        if "candidate" in perturbed:
            robust[case.id] = RobustnessCase(
                case.id,
                tuple(case.tags),
                tuple(kind for kind, _ in copies[case.id]),
                perturbed["candidate"],
                perturbed.get("baseline"),
            )
    return RunOutput(out, robust)


def case_result(
    case: GoldenCase,
    candidate: RoleResult | None,
    baseline: RoleResult | None,
    errors: Sequence[str] = (),
) -> CaseResult:
    """A :class:`CaseResult` for ``case``; any error text makes it an errored case."""
    return CaseResult(
        case_id=case.id,
        tags=tuple(case.tags),
        must_pass=case.must_pass,
        weight=case.weight,
        scorer=case.scorer,
        expected=case.expected_text(),
        candidate=candidate,
        baseline=baseline,
        error="; ".join(errors) if errors else None,
    )
