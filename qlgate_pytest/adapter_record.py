"""The adapters a gate run judged, as its report records them (``run.adapters``) and ``deploy``
reads them back.

Each role with an adapter directory gets ``{path, sha256, scheme, files}``: the identity of
``qlgate_core/adapter_identity.py`` (config, weights and every other file an engine reads), the same
for every engine, computed from the files whether or not the engine was loaded (a fully cached
run loads none). When the engine did load, its ``describe()`` says which identity it loaded
(``adapter_sha256``); if the files hash differently now, they changed during the run and the
record carries ``error`` instead of a ``sha256``, so nothing can approve files that were not
the ones gated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K", bound=str)  # a role name (engines use the Literal Role, the session plain str)


def adapter_record(path: Path, loaded_sha256: str | None = None) -> dict[str, Any]:
    """One role's record; never raises (an unidentifiable adapter records ``error``)."""
    from qlgate_pytest.gen_cache import adapter_hash

    record: dict[str, Any] = {"path": str(path)}
    try:
        identity = adapter_hash(path)
    except (OSError, ValueError) as exc:
        return {**record, "sha256": None, "error": f"cannot identify the adapter: {exc}"}
    if loaded_sha256 is not None and loaded_sha256 != identity.sha256:
        return {
            **record,
            "sha256": None,
            "error": f"the adapter changed during the gate run: the engine loaded "
            f"{loaded_sha256[:12]}..., the files now hash to {identity.sha256[:12]}...",
        }
    return {**record, **identity.to_json()}


def adapter_records(
    adapters: Mapping[K, Path | None], engine_info: Mapping[str, Any]
) -> dict[K, dict[str, Any]]:
    """``run.adapters``: a record for each role that has an adapter directory."""
    loaded = engine_info.get("adapter_sha256")
    loaded = loaded if isinstance(loaded, Mapping) else {}
    return {
        role: adapter_record(path, loaded.get(role))
        for role, path in adapters.items()
        if path is not None
    }


def engine_adapter_sha256(adapters: Mapping[K, Path | None]) -> dict[K, str]:
    """For an engine's ``describe()``: each role's adapter identity, as loaded. A directory that
    cannot be identified is left out (the engine's own load reports that problem)."""
    from qlgate_pytest.gen_cache import adapter_hash

    out: dict[K, str] = {}
    for role, path in adapters.items():
        if path is None:
            continue
        try:
            out[role] = adapter_hash(path).sha256
        except (OSError, ValueError):
            continue
    return out
