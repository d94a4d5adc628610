"""One pytest-xdist worker per GPU: ``--gate-device auto`` on worker ``gwI`` of a machine with
N visible GPUs serves on ``cuda:{I % N}``.

Each worker loads its own engine (base model + adapters), so ``-n K`` costs K times the engine's
memory: on one GPU, K workers share it and K copies must fit; on N GPUs, ``-n N`` gives each
worker a GPU of its own. GPUs are counted without importing torch, from
``CUDA_VISIBLE_DEVICES`` when set, else the driver's ``/proc/driver/nvidia/gpus``; indices are
relative to what is visible, as CUDA numbers them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NVIDIA = Path("/proc/driver/nvidia/gpus")


def visible_gpus(environ: dict[str, str] | None = None, proc: Path = _NVIDIA) -> int:
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def worker_device(
    requested: str, environ: dict[str, str] | None = None, proc: Path = _NVIDIA
) -> str:
    """The device for this process: ``requested``, unless it is ``auto`` on an xdist worker
    of a multi-GPU machine (see the module docstring)."""
    env = os.environ if environ is None else environ
    match = re.fullmatch(r"gw(\d+)", env.get("PYTEST_XDIST_WORKER", ""))
    if requested != "auto" or match is None:
        return requested
    n = visible_gpus(dict(env), proc)
    return f"cuda:{int(match[1]) % n}" if n > 1 else requested
