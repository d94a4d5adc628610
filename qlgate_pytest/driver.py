"""Runs every selected case through the engine, for every role, before any item is scored.

Engines are fed whole request lists (one ``rank`` and one ``generate`` call per role), so they
batch; a test item then only looks up its case's result. Failures never escape as tracebacks:
an engine error becomes the ``error`` of each affected case, which turns the gate red with the
message as the reason.

A :class:`GenerationCache` sits between the driver and the engine. The default remembers
nothing; a content-addressed cache (keyed by weights, adapter, tokenizer, template, prompt and
decoding) plugs in here without touching engines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from qlgate_pytest import scoring
from qlgate_pytest.cases import GoldenCase
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


def _through_cache(
    call: Callable[[Role, Sequence[_Req]], list[_Res]],
    role: Role,
    requests: Sequence[_Req],
    cache: GenerationCache,
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
    try:
        results = call(role, missing)
        if len(results) != len(missing):
            raise RuntimeError(f"engine returned {len(results)} results for {len(missing)}")
    except Exception as exc:  # the engine's failure is every affected case's error
        text = f"{role} engine call failed: {type(exc).__name__}: {exc}".splitlines()[0]
        found.update((r.key, text) for r in missing)
        return found
    for request, result in zip(missing, results, strict=True):
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
    store = cache if cache is not None else NoCache()
    ranked = [c for c in cases if c.effective_mode == "rank"]
    generated = [c for c in cases if c.effective_mode == "generate"]
    raw: dict[Role, dict[str, Result | str]] = {}
    for role in roles:
        got: dict[str, Result | str] = {}
        if ranked:
            got.update(_through_cache(engine.rank, role, [rank_request(c) for c in ranked], store))
        if generated:
            got.update(
                _through_cache(
                    engine.generate, role, [generate_request(c) for c in generated], store
                )
            )
        raw[role] = got
    out: dict[str, CaseResult] = {}
    for case in cases:
        outcomes: dict[Role, RoleResult | None] = {"candidate": None, "baseline": None}
        errors: list[str] = []
        for role in roles:
            outcome = _outcome(case, role, raw[role].get(case.id))
            if isinstance(outcome, str):
                errors.append(outcome)
            else:
                outcomes[role] = outcome
        if baseline_outcomes is not None and "baseline" not in roles:
            outcomes["baseline"] = baseline_outcomes.get(case.id)
        out[case.id] = case_result(case, outcomes["candidate"], outcomes["baseline"], errors)
    return out


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
