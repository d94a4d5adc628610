"""Greedy, seeded batched generation for the ``hf`` engine (whatever role is active)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from qlgate_pytest.engines.hf_batching import left_pad


def generate_batch(
    model: Any,
    torch: Any,
    device: str,
    prompts: Sequence[Sequence[int]],
    *,
    budget: int,
    pad_id: int,
    eos_ids: frozenset[int],
    seed: int,
) -> tuple[list[list[int]], float]:
    """New tokens per row (padded to the longest) and the batch's wall time in ms.

    Prompts are left-padded; ``generate`` derives position ids from the attention mask, so a
    padded row decodes as it would alone.
    """
    from transformers import GenerationConfig

    ids_rows, mask_rows = left_pad(prompts, pad_id)
    ids = torch.tensor(ids_rows, dtype=torch.long, device=device)
    mask = torch.tensor(mask_rows, dtype=torch.long, device=device)
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False,
        num_beams=1,
        max_new_tokens=budget,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids),
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    latency_ms = (time.perf_counter() - start) * 1000.0
    new = out[:, ids.shape[1] :].tolist()
    return [[int(t) for t in row] for row in new], latency_ms
