"""Validation label macro-F1 by log-likelihood ranking over the allowed labels.

For each validation row with a label, every allowed label is scored as the answer: the summed
log-probability of the tokens it adds after the prompt (end-of-turn included), i.e. exactly the
tokens training puts under the loss. The best-scoring label is the prediction. Ranking needs no
lenient parsing of free text (the base model often answers in a sentence) and is deterministic.

Each prompt runs once (left-padded, only its last position through the LM head); the labels'
remaining tokens then run together over a per-label copy of the prompt's key/value cache, so
four labels cost little more than one forward over the prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qlgate_core.stats import accuracy, macro_f1
from training.formatting import Example, render_continuation, render_prompt


@dataclass(frozen=True)
class LabelMetrics:
    """Label metrics of one model on the labelled validation rows."""

    macro_f1: float
    accuracy: float
    n: int


def best_label(scores: Mapping[str, float], labels: Sequence[str]) -> str:
    """The label with the highest score; ties go to the label listed first."""
    return max(labels, key=lambda label: (scores[label], -labels.index(label)))


def label_metrics(expected: Sequence[str], predicted: Sequence[str]) -> LabelMetrics:
    """Macro-F1 (the gate's definition, from ``qlgate_core.stats``) and accuracy."""
    correct = [e == p for e, p in zip(expected, predicted, strict=True)]
    return LabelMetrics(macro_f1(expected, list(predicted)), accuracy(correct), len(expected))


def labelled(examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """The examples whose label is one of ``labels`` (others cannot be ranked)."""
    allowed = set(labels)
    return [e for e in examples if e.label in allowed]


def rank_labels(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[dict[str, float]]:
    """Per example, each label's summed log-likelihood as the assistant's answer.

    Each prompt runs once: its last position scores every label's first token, and the rest of
    all labels' tokens run in one more pass over the prompt's key/value cache, copied per label.
    """
    import torch

    prompts = [render_prompt(tokenizer, e) for e in examples]
    conts = [[render_continuation(tokenizer, e, label) for label in labels] for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # Similar prompt lengths together: less padding per batch.
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    scores: list[dict[str, float]] = [{} for _ in examples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                totals = _score_batch(
                    model, [prompts[i] for i in batch], [conts[i] for i in batch], pad, device
                )
                for row, i in enumerate(batch):
                    scores[i] = {label: totals[row][j] for j, label in enumerate(labels)}
    finally:
        model.train(was_training)
    return scores


def _score_batch(
    model: Any,
    prompts: Sequence[list[int]],
    conts: Sequence[Sequence[list[int]]],
    pad: int,
    device: Any,
) -> list[list[float]]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt) :] = torch.tensor(prompt)
        mask[b, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    rows = [(b, j) for b in range(len(prompts)) for j in range(len(conts[b]))]
    owner = torch.tensor([b for b, _ in rows], device=device)
    heads = torch.tensor([conts[b][j][0] for b, j in rows], device=device)
    totals = first[owner, heads]
    tail_width = max(len(conts[b][j]) for b, j in rows) - 1
    if tail_width > 0:
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(owner)
        tail = torch.full((len(rows), tail_width), pad, dtype=torch.long)
        tail_mask = torch.zeros((len(rows), tail_width), dtype=torch.long)
        target = torch.zeros((len(rows), tail_width), dtype=torch.long)
        for r, (b, j) in enumerate(rows):
            cont = conts[b][j]
            n = len(cont) - 1
            if n:
                tail[r, :n] = torch.tensor(cont[:-1])
                tail_mask[r, :n] = 1
                target[r, :n] = torch.tensor(cont[1:])
        tail, tail_mask, target = tail.to(device), tail_mask.to(device), target.to(device)
        row_mask = mask[owner]
        positions = row_mask.sum(-1, keepdim=True) + torch.arange(tail_width, device=device)
        out2 = model(
            input_ids=tail,
            attention_mask=torch.cat([row_mask, tail_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{_cache_kwarg(model): cache},
        )
        logp = torch.log_softmax(out2.logits.float(), dim=-1)
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        totals = totals + (picked * tail_mask).sum(-1)
    flat = [float(x) for x in totals.cpu().tolist()]
    per_prompt: list[list[float]] = [[] for _ in prompts]
    for (b, _), value in zip(rows, flat, strict=True):
        per_prompt[b].append(value)
    return per_prompt


def _cache_kwarg(model: Any) -> str:
    """transformers 5.2x renamed the forward's ``past_key_values`` to ``cache``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def evaluate_labels(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
) -> LabelMetrics:
    """Rank ``labels`` for every labelled example and score the predictions."""
    rows = labelled(examples, labels)
    if not rows:
        return LabelMetrics(0.0, 0.0, 0)
    scores = rank_labels(model, tokenizer, rows, labels, batch_size=batch_size)
    predicted = [best_label(s, labels) for s in scores]
    return label_metrics([str(e.label) for e in rows], predicted)
