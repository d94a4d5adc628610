"""The lazy engine proxy, the per-worker GPU choice and the engine identity (pure, no model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from qlgate_pytest.engines.base import (
    Engine,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)
from qlgate_pytest.gate_cache import device_class, engine_identity, engine_version
from qlgate_pytest.lazy_engine import LazyEngine
from qlgate_pytest.xdist_gpu import visible_gpus, worker_device


class Echo:
    name = "echo"

    def __init__(self) -> None:
        self.warmed = False

    def describe(self) -> Mapping[str, Any]:
        return {"engine": "echo", "device": "cpu"}

    def warm_up(self) -> None:
        self.warmed = True

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return [Generation(r.key, r.messages[-1].content, 1.0, 1, 1) for r in requests]

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        return [Ranking(r.key, {r.labels[0]: 0.0}, r.labels[0], 1.0, 1, 1) for r in requests]

    def close(self) -> None:
        pass


def test_lazy_engine_loads_on_the_first_request_only() -> None:
    built: list[Echo] = []

    def load() -> Engine:
        built.append(Echo())
        return built[-1]

    lazy = LazyEngine("echo", {"engine": "echo", "versions": {}}, load)
    lazy.warm_up()
    assert not built and lazy.describe()["loaded"] is False
    assert lazy.stats() == {
        "loaded": False, "load_s": None, "calls": {"generate": 0, "rank": 0},
        "requests": {"generate": 0, "rank": 0},
    }  # fmt: skip
    msgs = (Message("user", "hi"),)
    assert lazy.generate("candidate", [GenerateRequest("a", msgs)])[0].text == "hi"
    lazy.rank("baseline", [RankRequest("b", msgs, ("x", "y")), RankRequest("c", msgs, ("x",))])
    assert len(built) == 1 and built[0].warmed
    assert lazy.describe() == {"engine": "echo", "device": "cpu"}
    stats = lazy.stats()
    assert stats["loaded"] and stats["requests"] == {"generate": 1, "rank": 2}


def test_a_failed_load_is_not_retried() -> None:
    attempts: list[int] = []

    def load() -> Engine:
        attempts.append(1)
        raise RuntimeError("out of memory")

    lazy = LazyEngine("echo", {}, load)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="out of memory"):
            lazy.rank("candidate", [])
    assert len(attempts) == 1


def test_one_gpu_per_xdist_worker(tmp_path: Path) -> None:
    proc = tmp_path / "gpus"
    proc.mkdir()
    for i in range(4):
        (proc / f"0000:0{i}:00.0").mkdir()
    assert visible_gpus({}, proc) == 4
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, proc) == 2
    assert worker_device("auto", {"PYTEST_XDIST_WORKER": "gw5"}, proc) == "cuda:1"
    env = {"PYTEST_XDIST_WORKER": "gw1", "CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert worker_device("auto", env, proc) == "cuda:1"
    assert worker_device("cpu", {"PYTEST_XDIST_WORKER": "gw1"}, proc) == "cpu"
    assert worker_device("auto", {}, proc) == "auto"  # not a worker: the engine decides
    assert worker_device("auto", {"PYTEST_XDIST_WORKER": "gw1"}, tmp_path / "none") == "auto"


def test_engine_identity_is_known_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    hf = engine_identity("hf")
    assert hf["engine"] == "hf" and hf["factory"] == "qlgate_pytest.engines.hf:create"
    assert {"qlgate", "torch", "transformers", "peft"} <= set(hf["versions"])
    assert engine_version(hf) != engine_version({**hf, "versions": {**hf["versions"], "peft": "0"}})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_class("auto") == "cpu" and device_class("cuda:1") == "cuda"


def test_deadline_excludes_loading_and_abandons_a_hung_engine() -> None:
    import threading
    import time

    from qlgate_pytest.driver import Deadline

    msgs = (Message("user", "hi"),)
    reqs = [GenerateRequest(str(i), msgs) for i in range(3)]
    release = threading.Event()

    def fast(role: Role, rs: Sequence[GenerateRequest]) -> list[Generation]:
        return Echo().generate(role, rs)

    def hang(role: Role, rs: Sequence[GenerateRequest]) -> list[Generation]:
        release.wait(5)
        return Echo().generate(role, rs)

    deadline = Deadline(0.05, batch_size=2, before=lambda: time.sleep(0.2))  # a slow "load"
    assert len(deadline.call(fast, "candidate", reqs)) == 3
    with pytest.raises(TimeoutError, match=r"3 request\(s\) not answered within 0.1s"):
        deadline.call(hang, "candidate", reqs)  # 0.05 s x 2 batches
    with pytest.raises(RuntimeError, match="engine was abandoned"):
        deadline.call(fast, "baseline", reqs)
    release.set()
    assert deadline.late(40.0) is None and "over --request-timeout" in str(deadline.late(51.0))
