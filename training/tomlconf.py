"""TOML config files, read the same way by every command: parse errors and positions.

``tomllib`` keeps no line numbers, so ``key_line`` finds a dotted key's line by scanning table
headers and assignments; the config loaders use it to point at ``file:line`` when validation of
a key fails. A missing, unreadable or unparseable file is a ``ConfigError`` naming the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.errors import ConfigError

_HEADER = re.compile(r"\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\s*(?:#.*)?")


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed file and its text (for ``key_line``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def key_line(text: str, loc: Sequence[str]) -> int | None:
    """The line of ``loc`` (tables, then the key: ``["poison", "trigger", "max_n"]``) in TOML
    ``text``: its assignment inside its table, or the header of a table that ``loc`` names
    itself. None when it cannot be found (a key given inline, or from elsewhere)."""
    if not text or not loc:
        return None
    *tables, key = loc
    target = tuple(loc)
    assignment = re.compile(re.escape(key) + r"\s*=")
    current: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = _HEADER.fullmatch(line)
        if header:
            current = tuple(part.strip() for part in header.group(1).split("."))
            if current == target:
                return number
            continue
        if current == tuple(tables) and assignment.match(line):
            return number
    return None
