"""The engine interface: what the gate asks of any backend (transformers, vLLM, an endpoint).

An engine serves named *roles* (``candidate``, ``baseline``) from one loaded model, so both roles
see the same weights, tokenizer, chat template and decoding. Requests arrive in bulk: an engine
batches them as it sees fit and returns one result per request, in request order.

Latency is per request as the caller experiences it: a request served in a batch of eight waits
for the whole batch, so its latency is the batch's wall time. Warm-up calls are never timed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Role = Literal["candidate", "baseline"]
ROLES: tuple[Role, ...] = ("candidate", "baseline")


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerateRequest:
    """Free generation: greedy decoding of up to ``max_new_tokens`` after the chat template."""

    key: str
    messages: tuple[Message, ...]
    max_new_tokens: int = 32


@dataclass(frozen=True)
class RankRequest:
    """Label ranking: the log-likelihood of each allowed label as the assistant's whole answer."""

    key: str
    messages: tuple[Message, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Generation:
    """The answer to a :class:`GenerateRequest`; ``error`` is set instead of raising."""

    key: str
    text: str
    latency_ms: float
    prompt_tokens: int
    output_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class Ranking:
    """The answer to a :class:`RankRequest`: log-likelihood per label and the best label.

    ``output_tokens`` counts the tokens of the chosen label's continuation (the answer the
    model would give), so tokens/s stays comparable with generation.
    """

    key: str
    scores: Mapping[str, float]
    best: str
    latency_ms: float
    prompt_tokens: int
    output_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine needs to load; resolved by the gate before the engine is built.

    ``adapters`` maps a role to its adapter directory; a role mapped to ``None`` is the base
    model without any adapter (the default baseline).
    """

    base_model: Path
    adapters: Mapping[Role, Path | None]
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    seed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """A loaded model serving the gate's roles. Implementations live one per file."""

    name: str

    def describe(self) -> Mapping[str, Any]:
        """Identity for the report: engine name, model, device, dtype, library versions."""
        ...

    def warm_up(self) -> None:
        """Run once before timed requests (allocations, kernel selection); never timed."""
        ...

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy, seeded generation for every request, batched; results in request order."""
        ...

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        """Label log-likelihoods for every request, batched; results in request order."""
        ...

    def close(self) -> None:
        """Free the model (GPU memory); the engine is unusable afterwards."""
        ...


EngineFactory = Callable[[EngineConfig], Engine]
