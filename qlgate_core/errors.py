"""The gate's exceptions, one small tree. Every message names the field, the bad value and where
it came from (option, env var, ini key, file:line).

    QlgateError                   base
    ├── OptionError               an option / ini / env value is invalid (pytest.UsageError)
    ├── GoldenCaseError           a golden case file is malformed (carries path, line, field)
    ├── PreflightError            the adapter or its environment fails a check before generation
    ├── EngineError               an engine failed to load or to generate
    │   └── EngineTimeout         a request exceeded its deadline
    └── ReportError               a report is unreadable, of another version or golden set
"""

from __future__ import annotations

from pathlib import Path


class QlgateError(Exception):
    """Base of every error the gate raises on purpose."""


class OptionError(QlgateError):
    """An option value is invalid; the message names the option, the value and its source."""


class GoldenCaseError(QlgateError):
    """A golden case file is malformed at ``path:line`` in ``field``."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str):
        self.path = Path(path)
        self.line = line
        self.field = field
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


class PreflightError(QlgateError):
    """A check before any generation failed; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"[{reason}] {message}")


class EngineError(QlgateError):
    """An engine failed to load or to generate."""


class EngineTimeout(EngineError):
    """A request exceeded its per-request deadline."""


class ReportError(QlgateError):
    """A report cannot be used: unreadable, another schema version, or another golden set."""


class MissingExtra(QlgateError):
    """A command needs an optional dependency group (a pip "extra") that is not installed."""

    def __init__(self, command: str, extra: str, module: str):
        self.command = command
        self.extra = extra
        self.module = module
        super().__init__(
            f"{command} needs the '{extra}' extra: pip install 'qlgate[{extra}]' "
            f"(module {module!r} is not installed)"
        )
