"""One identity for an adapter directory: every file that changes what an engine computes.

The generation cache's key, the gate report and ``deploy`` all use this one identity, so an
adapter whose *config* changed (``r``, ``lora_alpha``, ``use_rslora``, ``layers_to_transform``,
``target_modules``, ...) is a different adapter everywhere, not just one whose weights changed.

What is covered (fail closed): every file under the directory, recursively, except the few
named in :data:`EXCLUDED` that no engine reads. ``adapter_config.json`` is hashed as parsed JSON
in canonical form (sorted keys, no whitespace): any key may change the computation (peft reads
more keys than qlgate knows), so the whole parsed object counts, while re-indenting it does
not. Every other file is hashed by its bytes: weights, tokenizer files, the chat template, and
any file this module does not know, which an engine or a later peft might read.

Excluded, because no engine reads them and they change no output:
- ``README.md``: peft's model card, written by ``save_pretrained``;
- ``qlgate-provenance.json``: what the adapter was trained from. The gate's preflight reads it
  (tokenizer hashes, leakage), but preflight runs on every gate run, cached or not, and a
  server never reads it; so editing it neither stales cached answers nor what a report approved.

Imports only the standard library and ``qlgate_core.fingerprint``: the pytest plugin imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlgate_core.fingerprint import sha256_file, sha256_json

# Bump when what is hashed or how changes: a report recorded under another scheme cannot be
# compared with a fresh identity, and deploy refuses it instead of calling it stale.
SCHEME = 1
CONFIG = "adapter_config.json"
EXCLUDED = frozenset({"README.md", "qlgate-provenance.json"})


class AdapterIdentityError(ValueError):
    """The directory cannot be identified (missing, unreadable, config not JSON)."""


@dataclass(frozen=True)
class AdapterIdentity:
    """``sha256`` over ``files`` (relative POSIX path -> content hash) and the scheme."""

    sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    scheme: int = SCHEME

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "scheme": self.scheme, "files": dict(self.files)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> AdapterIdentity:
        """An identity as a report recorded it; raises ``AdapterIdentityError`` if malformed."""
        sha, scheme, files = value.get("sha256"), value.get("scheme"), value.get("files")
        if not isinstance(sha, str) or not isinstance(scheme, int) or not isinstance(files, dict):
            raise AdapterIdentityError("expected {sha256: str, scheme: int, files: {...}}")
        return cls(sha, {str(k): str(v) for k, v in files.items()}, scheme)

    def changes(self, other: AdapterIdentity) -> list[str]:
        """How ``other`` (a later identity) differs: ``name (changed|added|removed)``, sorted."""
        out = []
        for name in sorted({*self.files, *other.files}):
            mine, theirs = self.files.get(name), other.files.get(name)
            if mine == theirs:
                continue
            what = "added" if mine is None else "removed" if theirs is None else "changed"
            out.append(f"{name} ({what})")
        return out


def identity_files(directory: Path) -> list[str]:
    """The relative POSIX paths the identity covers, sorted; raises if ``directory`` is none."""
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise AdapterIdentityError(f"adapter directory {directory} {what}")
    names: list[str] = []
    # followlinks=False: a symlinked directory cannot loop; it is recorded by its target below.
    for root, dirs, files in os.walk(directory, followlinks=False):
        rel = Path(root).relative_to(directory)
        for d in list(dirs):
            if (Path(root) / d).is_symlink():
                files.append(d)
                dirs.remove(d)
        for name in files:
            path = (rel / name).as_posix()
            if path not in EXCLUDED:
                names.append(path)
    return sorted(names)


def _file_hash(directory: Path, name: str) -> str:
    path = directory / name
    try:
        if path.is_dir():  # a symlinked directory (see identity_files)
            return sha256_json({"symlink": str(path.readlink())})
        if name == CONFIG:
            return sha256_json({"json": json.loads(path.read_text(encoding="utf-8"))})
        return sha256_file(path)
    except json.JSONDecodeError as exc:
        raise AdapterIdentityError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterIdentityError(f"{path}: unreadable: {exc}") from None


def adapter_identity(directory: Path) -> AdapterIdentity:
    """The identity of the adapter in ``directory`` (see the module docstring)."""
    directory = Path(directory)
    # No check that this is a peft adapter (preflight's job, with its own reason codes): the
    # identity of whatever is there is still the identity.
    names = identity_files(directory)
    files = {name: _file_hash(directory, name) for name in names}
    return AdapterIdentity(sha256_json({"scheme": SCHEME, "files": files}), files)
