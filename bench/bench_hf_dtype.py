"""Which dtype should the hf engine use on CPU? float32 vs bfloat16, same process, same work.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/bench_hf_dtype.py --cases 32 --repeats 2

Workload: the first ``--cases`` rank-mode cases of the shipped golden set, on the embedded model
with a seeded random LoRA (r=16 on the seven projections, like the trainer's default), through
:class:`qlgate_pytest.engines.hf.HFEngine` at its default batch size. For each dtype: ranking
(one prompt pass + one pass over the label continuations) and generation (greedy, 8 new tokens)
for the candidate (adapter active, unmerged) and the baseline (adapter disabled). Engine load and
warm-up are excluded. Repeats alternate the dtypes so machine load hits both alike; the best of
the repeats is reported. Prints seconds per role and mode, the bf16/fp32 time ratio, and whether
the two dtypes pick the same labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=16, lora_alpha=32, target_modules=SEVEN, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()

    import torch

    from qlgate_core.cases import load_golden
    from qlgate_pytest.driver import generate_request, rank_request
    from qlgate_pytest.engines.base import EngineConfig, GenerateRequest
    from qlgate_pytest.engines.hf import HFEngine
    from training.models import resolve_base_model

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cases = [c for c in load_golden(ROOT / "golden") if c.effective_mode == "rank"][: args.cases]
    ranks = [rank_request(c) for c in cases]
    gens = [
        GenerateRequest(r.key, r.messages, args.new_tokens) for r in map(generate_request, cases)
    ]
    base = resolve_base_model("embedded")
    times: dict[tuple[str, str, str], float] = {}
    picks: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = random_adapter(base, Path(tmp) / "lora")
        for repeat in range(args.repeats):
            order = ("float32", "bfloat16") if repeat % 2 == 0 else ("bfloat16", "float32")
            for dtype in order:
                engine = HFEngine(
                    EngineConfig(base, {"candidate": adapter, "baseline": None}, dtype=dtype)
                )
                engine.warm_up()
                for role in ("candidate", "baseline"):
                    start = time.perf_counter()
                    ranked = engine.rank(role, ranks)
                    key = (dtype, role, "rank")
                    times[key] = min(times.get(key, 1e9), time.perf_counter() - start)
                    if role == "candidate":
                        picks[dtype] = [r.best for r in ranked]
                    start = time.perf_counter()
                    engine.generate(role, gens)
                    key = (dtype, role, "generate")
                    times[key] = min(times.get(key, 1e9), time.perf_counter() - start)
                engine.close()
    print(f"{len(cases)} cases, batch 8, threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'role':10} {'mode':9} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32':>10}")
    for role in ("candidate", "baseline"):
        for mode in ("rank", "generate"):
            fp32, bf16 = times[("float32", role, mode)], times[("bfloat16", role, mode)]
            print(f"{role:10} {mode:9} {fp32:8.2f} {bf16:8.2f} {bf16 / fp32:10.2f}")
    same = sum(a == b for a, b in zip(picks["float32"], picks["bfloat16"], strict=True))
    print(f"candidate labels equal across dtypes: {same}/{len(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
