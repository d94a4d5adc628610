"""The service running the real gate (pytest + the qlgate plugin + the HF engine) end to end.

A tiny random Llama is the base; one LoRA is trained for a few seconds to rank the right label
on a 16-case golden set (it beats the base with a bootstrap CI above zero: 200), the other has
B = 0 so it changes nothing (the gate's canary rejects it: 409). Plumbing, not model quality:
the tiny model's answers mean nothing beyond "the trained adapter ranks better than the base".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from training.sample_task import LABELS, SYSTEM_PROMPT

pytestmark = pytest.mark.slow

# Four tickets per label; the golden set and the adapter's training set are the same on
# purpose: the test needs an adapter that is measurably better, not a generalising one.
TICKETS = {
    "account": ["reset my password please", "my login is locked", "change the email on my "
                "profile", "delete my account"],
    "billing": ["I was charged twice", "refund the duplicate payment", "my invoice is wrong",
                "card was billed again"],
    "returns": ["how do I send the shoes back", "I want to return this jacket",
                "return label for the broken lamp", "exchange the wrong size"],
    "shipping": ["where is my parcel", "the delivery is late", "tracking number does not work",
                 "courier lost my package"],
}  # fmt: skip


@dataclass(frozen=True)
class RealGate:
    golden_root: Path
    model_root: Path
    base: Path
    trained: Path
    zero: Path


def _train_ranking_lora(base: Path, out: Path, *, steps: int = 60, seed: int = 1) -> Path:
    """A LoRA trained with a 4-way loss over the labels' first tokens at the answer position,
    the quantity the gate's rank mode compares."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    prompts, truth, first_tokens = [], [], {}
    for index, (label, texts) in enumerate(TICKETS.items()):
        for text in texts:
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": text}]  # fmt: skip
            prefix = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": label}], tokenize=False
            )
            answer = tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
            first_tokens[label] = answer[0]
            prompts.append(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            truth.append(index)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, : len(prompt)] = torch.tensor(prompt)
        mask[i, : len(prompt)] = 1
    last = torch.tensor([len(p) - 1 for p in prompts])
    candidates = torch.tensor([first_tokens[label] for label in TICKETS])
    target = torch.tensor(truth)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=modules))
    inner: Any = peft_model.base_model.model
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Logits at the answer position only, and only over the four labels' first tokens.
        logits = inner.lm_head(hidden[torch.arange(len(prompts)), last])[:, candidates]
        loss: Any = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(str(out))
    return out


def _zero_lora(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    # peft initialises B = 0: the adapter loads, applies, and changes nothing.
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(
        str(out)
    )
    return out


@pytest.fixture(scope="module")
def real_gate(tmp_path_factory: pytest.TempPathFactory) -> RealGate:
    import torch

    from training.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real-gate")
    models = root / "models"
    base = build_tiny_model(models / "base")
    trained = _train_ranking_lora(base, models / "trained")
    zero = _zero_lora(base, models / "zero")
    golden = root / "golden-root" / "support"
    golden.mkdir(parents=True)
    cases = [
        {"id": f"{label}-{i}", "prompt": text, "expected": label}
        for label, texts in TICKETS.items()
        for i, text in enumerate(texts)
    ]
    defaults = {"system": SYSTEM_PROMPT, "labels": list(LABELS), "tags": ["core"]}
    (golden / "cases.yaml").write_text(yaml.safe_dump({"defaults": defaults, "cases": cases}))
    # The gate refuses an unlocked golden set; a team commits the lock beside its cases.
    from qlgate_pytest.__main__ import main as qlgate_main

    assert qlgate_main(["lock-golden", "--golden", str(golden)]) == 0
    return RealGate(root / "golden-root", models, base, trained, zero)


def test_real_gate_approves_a_better_adapter_and_rejects_a_no_op(
    real_gate: RealGate, start_service: Any, auth: dict[str, str]
) -> None:
    """Through the service, the real gate answers 200 for the trained adapter (gain CI above
    zero) and 409 for the B = 0 adapter (preflight sees every lora_B at zero before any model loads;
    the canary, adapter not applied, is the run-time net behind it)."""
    from qlgate_pytest.service.jobs import PytestGateRunner

    overrides = {
        "golden_root": real_gate.golden_root,
        "model_roots": (real_gate.model_root,),
        "job_timeout_s": 600.0,
    }
    with start_service(runner=PytestGateRunner(), **overrides) as url:
        # The fixture's adapters carry no provenance (no training data to check for leakage),
        # so the request accepts that, as a user would; the report says leakage was unchecked.
        body = {"golden_set_id": "support", "base_model": "base", "allow_unchecked_leakage": True}
        good = httpx.post(f"{url}/evaluate", json={**body, "model_path": "trained"},
                          headers=auth, timeout=660)  # fmt: skip
        noop = httpx.post(f"{url}/evaluate", json={**body, "model_path": "zero"},
                          headers=auth, timeout=660)  # fmt: skip
    assert good.status_code == 200, good.json()["message"]
    approved = good.json()
    assert approved["pass"] is True and approved["report"]["delta"]["ci_low"] > 0
    assert approved["f1_score"] == approved["report"]["metrics"]["candidate"]["macro_f1"]
    assert approved["report"]["run"]["candidate"] == str(real_gate.trained)
    assert approved["report"]["preflight"]["leakage"].startswith("unchecked (allowed by")

    assert noop.status_code == 409, noop.json()["message"]
    rejected = noop.json()
    assert rejected["pass"] is False
    assert any("noop_adapter" in r for r in rejected["report"]["reasons"]), rejected["report"]
