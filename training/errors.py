"""The training package's exceptions, one small tree.

    TrainingError             base; ``python -m training`` prints it on one line, exit 2
    ├── ModelResolutionError  a base model cannot be resolved offline
    ├── ConfigError           a config file or option has a bad key or value
    ├── DataError             input cannot be read at all (a bad *line* is quarantined instead)
    ├── TeacherError          the augmentation teacher model failed
    ├── OutputExistsError     an output directory exists and is not ours to replace
    ├── OutputError           an output path cannot be written (read-only, full, loop, access)
    └── TrainingFailed        a run stopped itself; no adapter was promoted
        ├── DivergenceDetected    NaN/inf, loss above the cap, a spike, or zero LoRA gradients
        └── OutOfMemory           with the next setting to try
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every error the training package raises on purpose."""


class ModelResolutionError(TrainingError):
    """A base model spec names nothing that can be loaded without a download."""


class ConfigError(TrainingError):
    """A configuration key or value is invalid; the message names both and the source."""


class DataError(TrainingError):
    """An input file is missing or unreadable as a whole."""


class TrainingFailed(TrainingError):
    """Training stopped itself; no adapter was promoted."""


class DivergenceDetected(TrainingFailed):
    """The divergence guard stopped the run (NaN/inf, loss above threshold, spikes, zero grads)."""

    def __init__(self, message: str, *, step: int, value: float) -> None:
        super().__init__(message)
        self.step = step
        self.value = value


class OutOfMemory(TrainingFailed):
    """The device ran out of memory; the message names the next setting to try."""

    def __init__(self, message: str, *, micro_batch_size: int, accumulation: int) -> None:
        super().__init__(message)
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation


class TeacherError(TrainingError):
    """An augmentation teacher (a local model or an OpenAI-compatible endpoint) failed."""


class OutputExistsError(TrainingError):
    """An output directory exists and is not one qlgate wrote, so it is not replaced."""


class OutputError(TrainingError):
    """An output could not be written (read-only or full disk, a symlink loop, no permission);
    the message names the path and the errno, and nothing was promoted."""
