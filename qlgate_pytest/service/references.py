"""Paths an adapter's own files name, confined to the model roots like request paths.

An adapter directory inside a root is not enough: the gate also follows what the adapter
*says*. ``qlgate-provenance.json`` names its base model (``base_model.spec`` / ``.path``) and its
training data (``dataset.path``, read by the leakage check), and peft's ``adapter_config.json``
names ``base_model_name_or_path``. Left to the gate, any of these loads a model or reads data
from anywhere on the machine, or from the Hugging Face cache. So the service decides the base
model itself, with the gate's own order of precedence (provenance, then adapter_config, then
the embedded model; :func:`qlgate_pytest.base_model.base_model_for`), refuses the job when the
chosen reference lies outside the model roots, and passes it as an explicit ``--base-model`` so
the gate never follows a reference on its own.

How a reference is read here:

* ``embedded``: the operator-installed embedded model, as for the request field;
* an absolute path (``~`` expanded): inside a root after resolving symlinks, or refused;
* a relative name (a hub id such as ``org/model`` included): a directory under a model root
  (``<root>/org/model``), never the hub cache and never the gate's working directory;
* any ``..`` component or NUL byte: refused, as in request paths.

Training data is found the way the gate finds it (:func:`check_dataset`), and each place that
search would read must be inside the roots.

Every refusal is a :class:`RequestRejected` naming the file, the field and the value, raised
before any job is queued and so before any model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qlgate_pytest.service.paths import RequestRejected, Root, confine, confine_tree

EMBEDDED = "embedded"
PROVENANCE = "qlgate-provenance.json"
ADAPTER_CONFIG = "adapter_config.json"
_FIX = "put it under a --model-root or pass base_model in the request"
_FIX_DATA = "put the dataset under a --model-root"
_LOG = logging.getLogger("qlgate.service")


def _read_json(path: Path) -> Mapping[str, Any] | None:
    """The JSON object in ``path``; None when absent or unreadable (the gate's preflight judges
    a malformed file, and a reference it cannot read is one it cannot follow either)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def confine_reference(raw: str, roots: Sequence[Root], *, where: str) -> Path:
    """The directory a file-borne reference names under ``roots``; RequestRejected otherwise."""
    if "\x00" in raw:
        raise RequestRejected(400, f"{where}: {raw!r} contains a NUL byte")
    path = Path(raw).expanduser()
    if ".." in path.parts:
        raise RequestRejected(403, f"{where}: {raw!r} climbs with '..' out of the model roots")
    try:
        return confine(str(path), roots, field=where)
    except RequestRejected as exc:
        if exc.status != 404:
            raise
        kind = "directory" if path.is_absolute() else "directory (or local copy of a hub id)"
        raise RequestRejected(
            403,
            f"{where}: {raw!r} is not a {kind} under the model roots; the service loads no model "
            f"or data from elsewhere (the Hugging Face cache included): {_FIX}",
        ) from None


def _model_dir(raw: str, roots: Sequence[Root], *, where: str) -> str:
    if raw.strip() == EMBEDDED:
        return EMBEDDED
    path = confine_reference(raw.strip(), roots, where=where)
    if not (path / "config.json").is_file():
        raise RequestRejected(400, f"{where}: {raw!r} is not a model directory (no config.json)")
    confine_tree(path, roots, field=where)
    return str(path)


def base_model_of(adapter: Path, roots: Sequence[Root]) -> str:
    """``embedded`` or the confined base model directory the gate would serve for ``adapter``
    (provenance spec, else its recorded path, else adapter_config's name, else embedded)."""
    provenance = _read_json(adapter / PROVENANCE)
    base = (provenance or {}).get("base_model")
    if isinstance(base, dict) and isinstance(base.get("spec"), str) and base["spec"]:
        where = f"{PROVENANCE} base_model.spec"
        try:
            return _model_dir(base["spec"], roots, where=where)
        except RequestRejected as spec_refused:
            recorded = base.get("path")
            if not isinstance(recorded, str) or not recorded:
                raise
            try:
                return _model_dir(recorded, roots, where=f"{PROVENANCE} base_model.path")
            except RequestRejected as path_refused:
                raise RequestRejected(
                    path_refused.status, f"{spec_refused}; and {path_refused}"
                ) from None
    config = _read_json(adapter / ADAPTER_CONFIG)
    name = (config or {}).get("base_model_name_or_path")
    if isinstance(name, str) and name.strip():
        return _model_dir(name, roots, where=f"{ADAPTER_CONFIG} base_model_name_or_path")
    return EMBEDDED


def _holds_dataset(path: Path) -> bool:
    # Where training_data.locate looks for a saved dataset under a candidate location.
    return any(
        (saved / marker).is_file()
        for saved in (path / "dataset", path)
        for marker in ("dataset_dict.json", "state.json")
    )


def check_dataset(adapter: Path, roots: Sequence[Root]) -> None:
    """Refuse an adapter whose provenance leads the gate to training data outside the model
    roots. The gate's leakage check looks for ``dataset.path`` in several places
    (:func:`qlgate_pytest.training_data.candidates`: as recorded, beside the provenance, and
    under each directory above it) and reads every saved dataset it finds there until one
    verifies; so each such place holding a dataset must be inside the roots. The gate's working
    directory is left out: the service creates it empty for each job."""
    from qlgate_pytest.training_data import candidates

    provenance = _read_json(adapter / PROVENANCE)
    dataset = (provenance or {}).get("dataset")
    raw = dataset.get("path") if isinstance(dataset, dict) else None
    if not isinstance(raw, str) or not raw:
        return
    where = f"{PROVENANCE} dataset.path"
    why = "the gate reads the training data for its leakage check"
    recorded = Path(raw).expanduser()
    if "\x00" in raw:
        raise RequestRejected(400, f"{where}: {raw!r} contains a NUL byte")
    if ".." in recorded.parts:
        raise RequestRejected(403, f"{where}: {raw!r} climbs with '..' out of the model roots")
    if recorded.is_absolute():
        try:
            confine(str(recorded), roots, field=where)
        except RequestRejected as exc:
            if exc.status != 404:
                raise RequestRejected(exc.status, f"{exc}: {why}; {_FIX_DATA}") from None
    for place, _searched in candidates(recorded, adapter, adapter):
        if not _holds_dataset(place):
            continue
        target = place.resolve()
        if not any(root.contains(target) for root in roots):
            # Where it was found stays in the log: a client learns nothing about what exists
            # outside the roots.
            _LOG.warning("%s of %s: the gate would read a dataset at %s", where, adapter, place)
            raise RequestRejected(
                403,
                f"{where}: looking for {raw!r}, the gate would read a dataset outside the model "
                f"roots ({why}); {_FIX_DATA}",
            )
        confine_tree(target, roots, field=where)
