"""The divergence guard: stop a run whose loss or gradients say it is no longer learning.

Rules, judged on every logged training loss and every optimizer step:
1. a NaN or infinite loss or gradient norm stops at once;
2. after the warm-up, a loss above ``max_loss`` stops;
3. a loss above ``spike_factor`` x the running median of recent losses (and at least
   ``spike_min_delta`` above it) is a spike; ``spike_patience`` consecutive spikes stop;
4. a LoRA gradient norm of exactly zero stops: nothing is being learned. bitsandbytes 0.50.2 does
   this silently on CPUs with AVX512-BF16 once a 4-bit model has run an eval-mode forward (it
   repacks the weights for inference, DESIGN.md §6); saturated activations after a huge update
   do it too.

The decisions are pure functions over a frozen state (``observe_loss``, ``check_gradient``),
unit- and property-tested; ``GuardCallback`` feeds them from transformers' Trainer and raises
``DivergenceDetected`` so the run ends before anything is promoted.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

from transformers import TrainerCallback

from training.errors import DivergenceDetected

# The loss of a fresh adapter on its first few steps is the base model's, which can sit above
# max_loss (SmolLM2 starts near 6 on bare labels); a short run's LR warm-up (5% of 30 steps is 2)
# is too short to judge convergence by, so the guard waits at least this share of the run.
MIN_WARMUP_FRACTION = 0.1

_MEDIAN_FLOOR = 1e-3


@dataclass(frozen=True)
class GuardPolicy:
    """Thresholds of the guard (from ``[guard]`` in the config)."""

    max_loss: float | None = 5.0
    warmup_steps: int = 0
    spike_factor: float = 3.0
    spike_min_delta: float = 1.0
    spike_patience: int = 3
    median_window: int = 20
    min_history: int = 5


@dataclass(frozen=True)
class GuardState:
    """Recent non-spiking losses (newest last) and the current run of consecutive spikes."""

    history: tuple[float, ...] = ()
    spikes: int = 0


@dataclass(frozen=True)
class Stop:
    """Why the guard stopped the run."""

    step: int
    value: float
    reason: str

    def message(self) -> str:
        return f"training stopped at step {self.step}: {self.reason}"


def observe_loss(
    policy: GuardPolicy, state: GuardState, step: int, loss: float
) -> tuple[GuardState, Stop | None]:
    """Judge one logged loss; return the next state and a ``Stop`` if the run must end."""
    if not math.isfinite(loss):
        return state, Stop(step, loss, f"loss is {loss} (not finite)")
    if policy.max_loss is not None and step > policy.warmup_steps and loss > policy.max_loss:
        return state, Stop(
            step,
            loss,
            f"loss {loss:.4g} > max_loss {policy.max_loss:g} after {policy.warmup_steps} "
            "warm-up steps",
        )
    if len(state.history) >= policy.min_history:
        median = statistics.median(state.history[-policy.median_window :])
        # A median of (almost) zero would make any positive loss "k times" it; floor it so the
        # ratio test stays meaningful and spike_factor keeps its meaning near a perfect fit.
        ratio_base = max(median, _MEDIAN_FLOOR)
        if loss > policy.spike_factor * ratio_base and loss - median >= policy.spike_min_delta:
            spikes = state.spikes + 1
            if spikes >= policy.spike_patience:
                return replace(state, spikes=spikes), Stop(
                    step,
                    loss,
                    f"loss {loss:.4g} above {policy.spike_factor:g} x the running median "
                    f"{median:.4g} for {spikes} consecutive log steps",
                )
            # Spikes stay out of the history so a run of them cannot raise its own baseline.
            return replace(state, spikes=spikes), None
    history = (*state.history, loss)[-policy.median_window :]
    return GuardState(history, 0), None


def check_gradient(step: int, norm: float, hint: str = "") -> Stop | None:
    """A ``Stop`` when the trainable (LoRA) gradient norm is zero or not finite; ``hint`` is
    appended to the zero-gradient reason (the likely cause on this setup)."""
    if not math.isfinite(norm):
        return Stop(step, norm, f"LoRA gradient norm is {norm} (not finite)")
    if norm == 0.0:
        reason = "LoRA gradient norm is 0: nothing is being learned"
        return Stop(step, norm, f"{reason} ({hint})" if hint else reason)
    return None


def trainable_grad_norm(model: Any) -> float:
    """L2 norm over the gradients of all trainable parameters (missing gradients count as 0)."""
    import torch

    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))


class GuardCallback(TrainerCallback):
    """Feeds the Trainer's logged losses and per-step gradients to the guard's pure rules.

    Raising from a callback ends ``Trainer.train`` at once; every DDP rank sees the same
    all-reduced loss and gradients, so all ranks raise together.
    """

    def __init__(
        self,
        policy: GuardPolicy,
        *,
        check_gradients: bool = True,
        warmup_ratio: float | None = None,
        zero_gradient_hint: str = "",
    ) -> None:
        self.policy = policy
        self.check_gradients = check_gradients
        self.zero_gradient_hint = zero_gradient_hint
        self.warmup_ratio = warmup_ratio
        self.state = GuardState()
        self.stop: Stop | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # The LR warm-up length is only known once the Trainer has counted the steps.
        if self.warmup_ratio is not None and state.max_steps > 0:
            ratio = max(self.warmup_ratio, MIN_WARMUP_FRACTION)
            steps = math.ceil(ratio * state.max_steps)
            self.policy = replace(self.policy, warmup_steps=steps)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if not logs or "loss" not in logs:
            return  # evaluation logs carry eval_loss, not loss
        loss = float(logs["loss"])
        self.state, stop = observe_loss(self.policy, self.state, int(state.global_step), loss)
        self._raise(stop)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model = kw.get("model")
        if not self.check_gradients or model is None:
            return
        # global_step counts finished steps; this is the step about to finish.
        step = int(state.global_step) + 1
        self._raise(check_gradient(step, trainable_grad_norm(model), self.zero_gradient_hint))

    def _raise(self, stop: Stop | None) -> None:
        if stop is not None:
            self.stop = stop
            raise DivergenceDetected(stop.message(), step=stop.step, value=stop.value)
