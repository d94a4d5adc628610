"""Label ranking by log-likelihood for the ``hf`` engine: the forward passes, no role logic.

A label's score is the summed log-probability of the tokens the chat template emits for it as
the assistant's whole answer (label plus end-of-turn). Work is shared two ways, and each keeps
the result equal (within float rounding) to scoring ``prompt + label`` alone:

- a prefix every prompt of a group shares (the system prompt: about half of every prompt's
  tokens in the shipped golden set) is run once, batch 1; its KV cache is shared by every row
  of the group's batches (expanded, not copied);
- each prompt's own tokens and *all* of its label continuations go through one forward pass:
  the continuations are appended after the prompt as branches of a tree, each branch attending
  to the prompt and to its own earlier tokens only (a 4D attention mask), and each branch's
  positions continue from the prompt's end. So the prompt is computed once, the labels never
  copy its cache, and a batch costs one pass.

A row's columns are ``[shared prefix | left padding | own tokens | branch 1 | branch 2 | ...]``.
The first token of every label is scored from the prompt's last position; every later token
from the branch position before it. Padding is masked out of every real query.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from qlgate_pytest.engines.hf_batching import left_pad


class RankPasses:
    """Forward passes over one served model (whatever role is active when they run)."""

    def __init__(self, model: Any, torch: Any, device: str, pad_id: int, cache_kwarg: str) -> None:
        self.model = model
        self.torch = torch
        self.device = device
        self.pad_id = pad_id
        self.cache_kwarg = cache_kwarg

    def _tensor(self, rows: Sequence[Sequence[int]]) -> Any:
        return self.torch.tensor(rows, dtype=self.torch.long, device=self.device)

    def prefix_cache(self, prefix: Sequence[int]) -> Any:
        """The KV cache of ``prefix`` alone (positions 0..len-1), to be shared by many rows."""
        out = self.model(input_ids=self._tensor([list(prefix)]), use_cache=True, logits_to_keep=1)
        return _cache_of(out)

    def score(
        self,
        prefix_len: int,
        prefix_cache: Any,
        own: Sequence[Sequence[int]],
        conts: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[float]]:
        """Scores per row per label; ``own`` are the prompts without the shared prefix."""
        torch = self.torch
        rows = len(own)
        own_ids, own_mask_rows = left_pad(own, self.pad_id)
        width = len(own_ids[0])
        # Branches: every label's continuation but its last token (nothing predicts after it).
        branches = [[list(c[:-1]) for c in row] for row in conts]
        depth = max(sum(len(b) for b in row) for row in branches)
        ids: list[list[int]] = []
        positions: list[list[int]] = []
        branch_of: list[list[int]] = []  # per row and fed branch token: its label, -1 for padding
        for b in range(rows):
            own_len = len(own[b])
            fed = [t for branch in branches[b] for t in branch]
            ids.append(own_ids[b] + fed + [self.pad_id] * (depth - len(fed)))
            pad = width - own_len
            pos = [prefix_len] * pad + list(range(prefix_len, prefix_len + own_len))
            labels: list[int] = []
            for j, branch in enumerate(branches[b]):
                pos += range(prefix_len + own_len, prefix_len + own_len + len(branch))
                labels += [j] * len(branch)
            positions.append(pos + [prefix_len] * (depth - len(fed)))
            branch_of.append(labels + [-1] * (depth - len(fed)))
        own_mask = torch.tensor(own_mask_rows, dtype=torch.bool, device=self.device)
        label_of = torch.tensor(branch_of, dtype=torch.long, device=self.device)
        mask = self._tree_mask(prefix_len, own_mask, label_of)
        kwargs: dict[str, Any] = {}
        if prefix_len:
            kwargs[self.cache_kwarg] = _expanded(prefix_cache, rows)
        out = self.model(
            input_ids=self._tensor(ids),
            attention_mask=mask,
            position_ids=self._tensor(positions),
            use_cache=prefix_len > 0,
            logits_to_keep=depth + 1,
            **kwargs,
        )
        # logits[:, 0] follow the prompt's last token; logits[:, 1 + t] follow branch token t.
        logits = out.logits.float()
        logz = logits.logsumexp(-1)
        sources: list[list[int]] = []
        targets: list[list[int]] = []
        for b in range(rows):
            start = 0
            for cont, branch in zip(conts[b], branches[b], strict=True):
                sources.append([0] + [1 + start + k for k in range(len(branch))])
                targets.append(list(cont))
                start += len(branch)
        longest = max(len(s) for s in sources)
        owner = [b for b in range(rows) for _ in conts[b]]
        src = self._tensor([s + [0] * (longest - len(s)) for s in sources])
        tgt = self._tensor([t + [0] * (longest - len(t)) for t in targets])
        valid = self._tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sources])
        who = self._tensor([[b] for b in owner])
        picked = logits[who, src, tgt] - logz[who, src]
        totals = (picked * valid).sum(-1).tolist()
        scores: list[list[float]] = [[] for _ in own]
        for b, value in zip(owner, totals, strict=True):
            scores[b].append(float(value))
        return scores

    def _tree_mask(self, prefix_len: int, own_mask: Any, label_of: Any) -> Any:
        """Additive 4D mask [rows, 1, queries, keys]: causal over the prompt, branch-local after.

        Keys: prefix (always visible), own tokens (visible when real and not in the query's
        future), branch tokens (visible to queries of the same label at the same or a later
        depth). A padding query sees at least itself, so no softmax row is empty.
        """
        torch = self.torch
        rows, width = own_mask.shape
        depth = label_of.shape[1]
        q = width + depth
        idx = torch.arange(q, device=self.device)
        causal = idx[None, :] <= idx[:, None]  # [q, q] key <= query
        real = torch.cat([own_mask, label_of >= 0], dim=1)  # [rows, q]
        # Which label a column belongs to: -2 for prompt columns (shared by every branch).
        col_label = torch.cat(
            [torch.full((rows, width), -2, dtype=torch.long, device=self.device), label_of], dim=1
        )
        prompt_key = col_label[:, None, :] == -2
        same_branch = col_label[:, None, :] == col_label[:, :, None]
        allowed = causal[None] & real[:, None, :] & (prompt_key | same_branch)
        allowed = allowed | torch.eye(q, dtype=torch.bool, device=self.device)[None]
        if prefix_len:
            visible = torch.ones((rows, q, prefix_len), dtype=torch.bool, device=self.device)
            allowed = torch.cat([visible, allowed], dim=2)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def _expanded(cache: Any, rows: int) -> Any:
    """A cache holding ``cache``'s tokens for ``rows`` rows, without copying them.

    The new tokens are concatenated onto the prefix (a fresh tensor per layer), so expanded
    views are enough and the shared prefix cache stays unchanged for the next batch.
    """
    layers = getattr(cache, "layers", None)
    if layers and all(hasattr(layer, "keys") for layer in layers):
        memo: dict[int, Any] = {}
        for layer in layers:
            for tensor in (layer.keys, layer.values):
                memo[id(tensor)] = tensor.expand(rows, *tensor.shape[1:])
        return copy.deepcopy(cache, memo)
    fresh = copy.deepcopy(cache)  # other cache layouts: a real copy
    fresh.batch_repeat_interleave(rows)
    return fresh
