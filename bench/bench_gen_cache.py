"""Generation cache: a cold gate run vs a re-run of the unchanged candidate, same machine, same
invocation of this script.

Both runs are the real thing: ``pytest --candidate=ADAPTER --golden=golden/`` in a subprocess
on the embedded model (SmolLM2-135M-Instruct) with a real, non-zero LoRA made here with peft
(random A, small random B on all seven projection modules, so it changes the model's answers a
little, as a trained adapter does). The cold run clears the cache first; the warm run finds every
answer in it and, with the lazy engine, never loads the model.

The shipped golden set's case files are used. ``golden/test_custom_cases.py`` is left out with
``--ignore``: it asks the engine fresh questions on purpose (batched-vs-alone agreement), so it
loads the model on any run; it is a team test, not part of what the cache serves.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_gen_cache.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(SEVEN), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)  # a nudge, not noise that drowns the base model
    peft_model.save_pretrained(str(out))
    return out


def gate_run(project: Path, adapter: Path, cache: Path, *extra: str) -> tuple[float, Any]:
    report = project / f"report-{len(list(project.glob('report-*.json')))}.json"
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
        f"--candidate={adapter}", f"--golden={REPO / 'golden'}",
        f"--ignore={REPO / 'golden' / 'test_custom_cases.py'}",
        f"--gen-cache-dir={cache}", f"--gate-report={report}", *extra,
        # The nudged adapter is built here, with no provenance: no training data to check.
        "--allow-unchecked-leakage",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a red verdict is still a complete run
        sys.exit(f"gate run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}")
    return wall, json.loads(report.read_text(encoding="utf-8"))


def main() -> None:
    from training.models import resolve_base_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = resolve_base_model("embedded")
    with tempfile.TemporaryDirectory(prefix="bench-gen-cache-") as tmp:
        project = Path(tmp)
        (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n", encoding="utf-8")
        adapter = make_adapter(base, project / "adapter")
        cache = project / "cache"
        cold_s, cold = gate_run(project, adapter, cache, "--clear-gen-cache")
        warm_s, warm = gate_run(project, adapter, cache)
    n = cold["metrics"]["n_cases"]
    print(f"golden set: {n} cases; engine {cold['run']['engine'].get('engine')}, base {base.name}")
    print(
        f"cold: {cold_s:7.1f} s  cache {cold['cache']['hits']} hits / "
        f"{cold['cache']['misses']} misses, engine loaded: {cold['engine_load']['loaded']}, "
        f"{sum(cold['engine_load']['engine_requests'].values())} engine requests"
    )
    print(
        f"warm: {warm_s:7.1f} s  cache {warm['cache']['hits']} hits / "
        f"{warm['cache']['misses']} misses, engine loaded: {warm['engine_load']['loaded']}, "
        f"{sum(warm['engine_load']['engine_requests'].values())} engine requests"
    )
    same = [r["candidate"]["predicted"] for r in cold["cases"]] == [
        r["candidate"]["predicted"] for r in warm["cases"]
    ]
    print(f"same verdict: {cold['passed'] == warm['passed']}, same predictions: {same}")
    print(f"speed-up of the cached re-run vs cold: {cold_s / warm_s:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
