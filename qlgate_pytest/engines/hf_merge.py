"""Merged LoRA weights for a role's pass, swapped in by reference and out again exactly.

An unmerged LoRA layer costs two extra small matmuls (and their kernel launches) per projection
per forward; merging ``W + s * B @ A`` into the base weight removes them. peft's own
``merge_adapter``/``unmerge_adapter`` subtract the delta again on unmerge, which leaves the base
weights off by rounding, so the base-model baseline would no longer be the base model. Here the
merged weights are separate tensors, built once per adapter (the merge is computed in float32
and rounded once to the model's dtype), and the original ``Parameter`` objects are put back
after the pass: the base model is bit-identical before and after.

For the pass, each LoRA layer is replaced in its parent by its own base layer (so peft's
wrapper costs nothing either), and put back afterwards. Memory: one extra copy of every targeted
weight per merged adapter (the engine falls back to unmerged LoRA where merging is off or the
adapter is not a plain LoRA on linear layers: DoRA and other variants, LoRA bias, embedding
LoRA, ``modules_to_save``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def mergeable(model: Any, adapter: str) -> str | None:
    """None if ``adapter`` can be merged by :class:`MergedWeights`, else the reason it cannot."""
    import torch
    from peft.tuners.lora import Linear

    config = getattr(model, "peft_config", {}).get(adapter)
    if config is None:
        return f"no peft config for adapter {adapter!r}"
    if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
        return "the adapter trains whole modules or tokens beside its LoRA layers"
    found = False
    for layer in _lora_layers(model):
        if adapter in getattr(layer, "lora_embedding_A", {}):
            return "the adapter has embedding LoRA layers"
        if adapter not in layer.lora_A:
            continue
        if not isinstance(layer, Linear) or not isinstance(layer.get_base_layer(), torch.nn.Linear):
            return f"{type(layer).__name__} layers are not merged here"
        if adapter in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter, False):
            return "the adapter uses a LoRA variant (e.g. DoRA)"
        if getattr(layer, "lora_bias", {}).get(adapter, False):
            return "the adapter has LoRA bias terms"
        if layer.merged:
            return "the model already has merged adapters"
        found = True
    return None if found else f"adapter {adapter!r} has no LoRA layers"


def base_bypass_ok(model: Any) -> bool:
    """Whether the base role may bypass the LoRA layers (no adapter wraps other modules)."""
    return not any(
        getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None)
        for config in getattr(model, "peft_config", {}).values()
    )


class LoraBypass:
    """Runs a role with every LoRA layer replaced by its plain base layer, weights chosen per role.

    For an adapter role the base layers carry the adapter's merged weights (built once, kept);
    for the base-model role they carry the original weights, which is exactly what peft computes
    with adapters disabled, minus the wrapper's Python overhead. Everything is put back on exit.
    """

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self._model = model
        self._sites: list[tuple[Any, str, Any]] = []  # (parent module, attribute, LoRA layer)
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                parent_name, _, attr = name.rpartition(".")
                self._sites.append((model.get_submodule(parent_name), attr, module))
        self._merged: dict[str, dict[int, Any]] = {}

    def _build(self, adapter: str) -> dict[int, Any]:
        import torch

        merged: dict[int, Any] = {}
        with torch.no_grad():
            for _, _, layer in self._sites:
                if adapter not in layer.lora_A:
                    continue
                original = layer.get_base_layer().weight
                delta = layer.get_delta_weight(adapter).float()
                weight = (original.float() + delta).to(original.dtype)
                merged[id(layer)] = torch.nn.Parameter(weight, requires_grad=False)
        return merged

    @contextlib.contextmanager
    def active(self, adapter: str | None) -> Iterator[None]:
        """The body runs with ``adapter`` merged (None: the base model); restored on exit."""
        merged: dict[int, Any] = {}
        if adapter is not None:
            if adapter not in self._merged:
                self._merged[adapter] = self._build(adapter)
            merged = self._merged[adapter]
        swapped: list[tuple[Any, str, Any, Any]] = []
        try:
            for parent, attr, layer in self._sites:
                base = layer.get_base_layer()
                swapped.append((parent, attr, layer, base.weight))
                if id(layer) in merged:
                    base.weight = merged[id(layer)]
                setattr(parent, attr, base)
            yield
        finally:
            for parent, attr, layer, weight in swapped:
                layer.get_base_layer().weight = weight
                setattr(parent, attr, layer)

    def clear(self) -> None:
        self._merged.clear()
