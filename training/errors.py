"""The training package's exceptions, one small tree.

    TrainingError                 base; ``python -m training`` prints its message on one line, exit 2
    ├── ModelResolutionError      a base model cannot be resolved offline
    ├── ConfigError               a config file or option has a bad key or value
    ├── DataError                 input data cannot be read at all (a bad *line* is quarantined instead)
    └── TrainingFailed            a run stopped itself (divergence, zero gradients, out of memory)
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
