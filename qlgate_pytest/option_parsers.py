"""The gate options' validators: pure functions, a string in, a value out, ``ValueError`` with
the reason (``options.py`` adds the option's name and source to it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from qlgate_core.errors import OptionError


def parse_float(
    text: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite float within the given bounds."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"must be {'>' if low_open else '>='} {low:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"must be {'<' if high_open else '<='} {high:g}")
    return value


def parse_min_f1_gain(text: str) -> float:
    return parse_float(text, low=-1.0, high=1.0, high_open=True)


def parse_confidence(text: str) -> float:
    return parse_float(text, low=0.5, high=1.0, high_open=True)


def parse_max_p99_ms(text: str) -> float:
    return parse_float(text, low=0.0, low_open=True)


def parse_max_slice_drop(text: str) -> float:
    return parse_float(text, low=0.0, high=1.0)


def parse_int(text: str, *, low: int) -> int:
    """A whole number >= ``low``."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < low:
        raise ValueError(f"must be >= {low}")
    return value


def parse_positive_int(text: str) -> int:
    return parse_int(text, low=1)


def parse_seed(text: str) -> int:
    return parse_int(text, low=0)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (``cuda:N`` also passes when ``cuda`` is a choice)."""
    value = text.strip()
    if value in choices or (
        "cuda" in choices and value.startswith("cuda:") and value[5:].isdigit()
    ):
        return value
    raise ValueError(f"expected one of {', '.join(choices)}")


def parse_device(text: str) -> str:
    return parse_choice(text, ("auto", "cpu", "cuda", "mps"))


def parse_dtype(text: str) -> str:
    return parse_choice(text, ("auto", "float32", "bfloat16", "float16"))


def parse_engine(text: str) -> str:
    from qlgate_pytest.engines.registry import check_engine_name

    try:
        return check_engine_name(text.strip())
    except OptionError as exc:
        raise ValueError(str(exc)) from None


def parse_existing(path: Path, kind: Literal["dir", "file", "any"] = "any") -> Path:
    """``path`` if it exists (as a directory or a file when ``kind`` says so)."""
    ok = {"dir": path.is_dir, "file": path.is_file, "any": path.exists}[kind]()
    if not ok:
        raise ValueError(
            {"dir": "no such directory", "file": "no such file"}.get(kind, "no such path")
        )
    return path


def parse_adapter_dir(path: Path) -> Path:
    parse_existing(path, "dir")
    if not (path / "adapter_config.json").is_file():
        raise ValueError("no adapter_config.json in it: not a peft adapter directory")
    return path


def parse_report_path(path: Path) -> Path:
    """A file the gate may replace: absent, or a regular file that is not a link.

    A report is replaced by a rename, so a symlink would be swapped for a file (and a link to
    a device or another project's file is never what a user means), and a device node or FIFO
    cannot be replaced at all: each is refused before the run, not discovered after it.
    """
    if path.is_symlink():
        raise ValueError("is a symbolic link; give the path of a regular file")
    if path.exists():
        if path.is_dir():
            raise ValueError("is a directory; give a file path")
        if not path.is_file():
            raise ValueError("is not a regular file (a device, FIFO or socket); give a file path")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"its folder {parent} is not a directory")
    return path


def parse_base_model(text: str) -> str:
    spec = text.strip()
    if not spec:
        raise ValueError("empty")
    return spec


def parse_name(text: str) -> str:
    """A served model name: non-empty, no whitespace (it goes into a JSON ``model`` field)."""
    name = text.strip()
    if not name or any(c.isspace() for c in name):
        raise ValueError("expected a model name without spaces")
    return name


def parse_endpoint(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    return url


def parse_merge(text: str) -> str:
    """``auto``, ``on`` or ``off`` (true/false, yes/no, 1/0 are read as on/off)."""
    value = text.strip().lower()
    if value == "auto":
        return value
    try:
        return "on" if parse_bool(value) else "off"
    except ValueError:
        raise ValueError("expected auto, on or off") from None
