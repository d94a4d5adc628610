"""The divergence guard's pure decisions: NaN/inf, absolute threshold, spikes, zero gradients."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from training.guard import GuardPolicy, GuardState, check_gradient, observe_loss


def _run(policy: GuardPolicy, losses: list[float]) -> tuple[int, float, str] | None:
    """Feed losses as steps 1..n; return (step, value, reason) of the first stop, if any."""
    state = GuardState()
    for step, loss in enumerate(losses, start=1):
        state, stop = observe_loss(policy, state, step, loss)
        if stop is not None:
            return stop.step, stop.value, stop.reason
    return None


def test_nan_and_inf_stop_at_once_even_in_warmup() -> None:
    """A NaN or infinite loss stops on the step it appears, warm-up or not."""
    policy = GuardPolicy(warmup_steps=100)
    stop = _run(policy, [2.0, float("nan"), 1.0])
    assert stop is not None and stop[0] == 2 and math.isnan(stop[1])
    assert "nan" in stop[2]
    assert _run(policy, [float("inf")]) == (1, float("inf"), "loss is inf (not finite)")


def test_absolute_threshold_applies_only_after_warmup() -> None:
    """A loss above max_loss is tolerated during warm-up and stops right after it."""
    policy = GuardPolicy(max_loss=5.0, warmup_steps=2, min_history=100)
    assert _run(policy, [9.0, 8.0, 4.0, 3.0]) is None
    stop = _run(policy, [9.0, 8.0, 6.5])
    assert stop is not None and stop[:2] == (3, 6.5)
    assert "max_loss 5" in stop[2]
    assert _run(GuardPolicy(max_loss=None, min_history=100), [50.0] * 10) is None


def test_spike_needs_patience_consecutive_steps() -> None:
    """Spikes above k x the running median stop only after p consecutive ones."""
    policy = GuardPolicy(max_loss=None, spike_factor=3.0, spike_patience=3, min_history=5)
    base = [1.0, 1.1, 0.9, 1.0, 1.05]
    assert _run(policy, [*base, 4.0, 4.0, 1.0, 4.0, 4.0, 1.0]) is None  # never 3 in a row
    stop = _run(policy, [*base, 4.0, 4.5, 5.0])
    assert stop is not None and stop[:2] == (8, 5.0)
    assert "3 consecutive" in stop[2] and "running median 1" in stop[2]


def test_spike_ignores_noise_near_zero_loss() -> None:
    """A tenfold jump of a near-zero loss is not a spike: it must also exceed the median by
    spike_min_delta."""
    policy = GuardPolicy(max_loss=None, spike_min_delta=1.0)
    assert _run(policy, [0.01, 0.02, 0.01, 0.015, 0.01] + [0.2] * 10) is None


def test_spikes_do_not_enter_the_median() -> None:
    """Spiking losses stay out of the history, so a run of them cannot raise its own baseline."""
    policy = GuardPolicy(max_loss=None, spike_patience=3)
    state = GuardState()
    for step, loss in enumerate([1.0] * 5, start=1):
        state, _ = observe_loss(policy, state, step, loss)
    state, stop = observe_loss(policy, state, 6, 10.0)
    assert stop is None and state.spikes == 1 and 10.0 not in state.history
    state, stop = observe_loss(policy, state, 7, 1.0)
    assert stop is None and state.spikes == 0


def test_gradient_checks() -> None:
    """Zero and non-finite LoRA gradient norms stop; a positive finite norm does not."""
    zero = check_gradient(3, 0.0)
    assert zero is not None and zero.step == 3 and "gradient norm is 0" in zero.message()
    assert check_gradient(3, 0.0, "4-bit on CPU").reason.endswith("(4-bit on CPU)")  # type: ignore[union-attr]
    assert check_gradient(4, float("nan")) is not None
    assert check_gradient(4, float("inf")) is not None
    assert check_gradient(5, 1e-12) is None


@given(st.lists(st.floats(min_value=0.0, max_value=4.9), min_size=1, max_size=60))
def test_losses_below_threshold_and_flat_never_stop(losses: list[float]) -> None:
    """Any finite loss sequence below max_loss and with spike_factor huge never stops."""
    policy = GuardPolicy(max_loss=5.0, spike_factor=1e9)
    assert _run(policy, losses) is None


@given(
    st.lists(st.floats(min_value=0.0, max_value=10.0), max_size=30),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
)
def test_non_finite_always_stops_on_its_step(prefix: list[float], bad: float) -> None:
    """Whatever came before, a non-finite loss stops on exactly its step (if nothing earlier)."""
    policy = GuardPolicy(max_loss=None, spike_factor=1e9)
    stop = _run(policy, [*prefix, bad])
    assert stop is not None and stop[0] == len(prefix) + 1


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=80))
def test_history_is_bounded_and_spikes_counted(losses: list[float]) -> None:
    """The history never exceeds the median window, and spikes never exceed the patience."""
    policy = GuardPolicy(max_loss=None, median_window=7, spike_patience=4)
    state = GuardState()
    for step, loss in enumerate(losses, start=1):
        state, stop = observe_loss(policy, state, step, loss)
        assert len(state.history) <= 7
        assert state.spikes <= 4
        if stop is not None:
            assert state.spikes == 4
            break
