"""The hf engine's fast paths on a tiny random model, each against the straightforward way.

- ranking (shared system-prompt prefix, one tree-masked pass per batch, token-budget batches)
  equals the per-label full-sequence log-likelihood of ``prompt + label`` run alone;
- the merged candidate equals the unmerged (peft) candidate within float tolerance;
- the base-model baseline is bit-identical to a model that never had an adapter, and the
  weights and modules are restored after every pass, also when the pass fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.base import EngineConfig, GenerateRequest, Message, RankRequest
from qlgate_pytest.engines.hf import HFEngine
from qlgate_pytest.engines.hf_batching import shared_prefix_len

SYSTEM = (
    "You route support tickets for a small online shop. Read the customer's message and answer "
    "with exactly one of the allowed labels, nothing else."
)
LABELS = ("lost parcel", "billing", "account access", "returns and refunds")
TICKETS = (
    "I was charged twice.",
    "Where is my parcel? It has been two weeks and the tracking page shows nothing at all.",
    "I cannot log in.",
    "Refund please.",
    "The shoes are too small; how do I send them back and when will I get my money?",
    "Password reset mail never arrives.",
)
SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Models:
    base: Path
    lora: Path
    dora: Path


def _adapter(base: Path, out: Path, *, seed: int, dora: bool) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(SEVEN), init_lora_weights=False, use_dora=dora
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    import torch

    from training.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf-fast")
    base = build_tiny_model(root / "base")
    return Models(
        base,
        _adapter(base, root / "lora", seed=1, dora=False),
        _adapter(base, root / "dora", seed=2, dora=True),
    )


def _engine(models: Models, candidate: Path | None, **extra: Any) -> HFEngine:
    adapters: dict[str, Path | None] = {"candidate": candidate}
    if candidate is not None:
        adapters["baseline"] = None
    return HFEngine(EngineConfig(models.base, adapters, batch_size=1, extra=extra))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(models: Models) -> Iterator[HFEngine]:
    eng = _engine(models, models.lora)
    yield eng
    eng.close()


def conversation(text: str, system: str = SYSTEM) -> tuple[Message, ...]:
    return (Message("system", system), Message("user", text))


def rank_requests() -> list[RankRequest]:
    # two system prompts: two prefix groups, one of them a single request (no prefix)
    requests = [RankRequest(f"r{i}", conversation(t), LABELS) for i, t in enumerate(TICKETS)]
    requests.append(RankRequest("other", conversation("Hi", "Be brief."), ("yes", "no")))
    return requests


def gen_requests() -> list[GenerateRequest]:
    return [GenerateRequest(f"g{i}", conversation(t), 5) for i, t in enumerate(TICKETS)]


def naive_scores(engine: HFEngine, role: Any, request: RankRequest) -> dict[str, float]:
    """prompt + label alone, one full forward per label, summed log-probs of the label part."""
    import torch

    prompt = engine.prompt_ids(request.messages)
    out = {}
    for label in request.labels:
        cont = engine.continuation_ids(request.messages, label)
        with engine._role(role):
            logits = engine.model(input_ids=torch.tensor([prompt + cont])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        out[label] = sum(float(logp[len(prompt) - 1 + t, cont[t]]) for t in range(len(cont)))
    return out


def test_prompts_share_a_prefix_and_labels_span_several_tokens(engine: HFEngine) -> None:
    """The workload below really exercises the shared prefix and multi-token branches."""
    prompts = [engine.prompt_ids(r.messages) for r in rank_requests()[:-1]]
    assert shared_prefix_len(prompts) >= 16
    lengths = {len(engine.continuation_ids(conversation("x"), label)) for label in LABELS}
    assert len(lengths) > 1 and max(lengths) >= 3


@pytest.mark.parametrize("budget", [1, 64, 100_000])
def test_rank_equals_per_label_full_sequence_loglikelihood(models: Models, budget: int) -> None:
    """Any batching (one row per batch up to everything in one batch), both roles."""
    eng = _engine(models, models.lora, max_batch_tokens=budget)
    unmerged = _engine(models, models.lora, merge=False)
    try:
        for role in ("candidate", "baseline"):
            for request, got in zip(rank_requests(), eng.rank(role, rank_requests()), strict=True):
                assert got.error is None
                # the reference runs peft's own unmerged LoRA
                ref = naive_scores(unmerged, role, request)
                assert got.scores == pytest.approx(ref, abs=1e-4)
                assert got.best == max(request.labels, key=ref.__getitem__)
    finally:
        eng.close()
        unmerged.close()


def test_merged_candidate_matches_unmerged(models: Models, engine: HFEngine) -> None:
    """Merging the LoRA into the weights changes scores by float rounding only."""
    unmerged = _engine(models, models.lora, merge=False)
    try:
        assert engine.describe()["lora"] == {"candidate": "merged"}
        assert unmerged.describe()["lora"] == {"candidate": "unmerged: merging is off"}
        for a, b in zip(
            engine.rank("candidate", rank_requests()),
            unmerged.rank("candidate", rank_requests()),
            strict=True,
        ):
            assert a.scores == pytest.approx(b.scores, abs=1e-4)
            assert a.best == b.best
        merged_text = [g.text for g in engine.generate("candidate", gen_requests())]
        assert merged_text == [g.text for g in unmerged.generate("candidate", gen_requests())]
    finally:
        unmerged.close()


def test_baseline_is_bit_identical_to_a_model_without_adapters(
    models: Models, engine: HFEngine
) -> None:
    """After candidate passes, the base role equals a never-adapted model exactly."""
    import torch

    plain = _engine(models, None)
    try:
        before = {k: v.clone() for k, v in engine.model.get_base_model().state_dict().items()}
        lora_modules = [type(m) for m in engine.model.modules()]
        engine.rank("candidate", rank_requests())
        engine.generate("candidate", gen_requests())
        got = engine.rank("baseline", rank_requests())
        want = plain.rank("candidate", rank_requests())
        assert [g.scores for g in got] == [w.scores for w in want]  # exact, not approx
        assert [g.text for g in engine.generate("baseline", gen_requests())] == [
            g.text for g in plain.generate("candidate", gen_requests())
        ]
        after = engine.model.get_base_model().state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert [type(m) for m in engine.model.modules()] == lora_modules
    finally:
        plain.close()


def test_a_failing_pass_restores_the_model(engine: HFEngine) -> None:
    """An error inside a merged pass is the request's error; the LoRA layers come back."""
    from peft.tuners.lora import LoraLayer

    count = sum(isinstance(m, LoraLayer) for m in engine.model.modules())
    bad = [RankRequest("bad", conversation("x"), ("a",))]
    original = engine._passes.score

    def boom(*args: Any, **kwargs: Any) -> Any:
        assert sum(isinstance(m, LoraLayer) for m in engine.model.modules()) == 0  # bypassed
        raise RuntimeError("boom")

    engine._passes.score = boom  # type: ignore[method-assign]
    try:
        result = engine.rank("candidate", bad)[0]
    finally:
        engine._passes.score = original  # type: ignore[method-assign]
    assert result.error is not None and "boom" in result.error
    assert sum(isinstance(m, LoraLayer) for m in engine.model.modules()) == count


def test_an_unmergeable_adapter_runs_unmerged_and_stays_exact(models: Models) -> None:
    """DoRA is not merged here: the engine says so and still ranks exactly."""
    eng = _engine(models, models.dora)
    try:
        status = eng.describe()["lora"]["candidate"]
        assert status.startswith("unmerged:") and "variant" in status
        request = rank_requests()[1]
        got = eng.rank("candidate", [request])[0]
        assert got.scores == pytest.approx(naive_scores(eng, "candidate", request), abs=1e-4)
    finally:
        eng.close()


def test_bad_token_budget_is_an_engine_error(models: Models) -> None:
    with pytest.raises(EngineError, match="max_batch_tokens must be a positive integer"):
        _engine(models, None, max_batch_tokens=0)
