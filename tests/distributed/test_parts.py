"""The parts of a group that need no second process: rank 0's wire format, how a launch is
recognized, each rank's share of a model, and the watchdog's deadlines."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pensieve.engine.group import Watchdog
from pensieve.engine.lockstep import Admission, Decision, decode, encode
from pensieve.modelmgr.catalog import plan_for
from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.sharded import pipeline_split, rank_facts
from pensieve.modelmgr.sources import ModelSource
from pensieve.models import SamplingParams
from pensieve.utils import ModelLoadError, load_settings
from pensieve.utils.launcher import launched_backend, launched_rank


def test_a_decision_crosses_the_wire_unchanged() -> None:
    decision = Decision(
        turn=42,
        admissions=(
            Admission(7, [1, 2, 3, 49151], 100, persist=2),
            Admission(8, list(range(5000)), 7, sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=2**62 + 5)),
            Admission(9, [5], 1, sampling=SamplingParams(temperature=1.3, seed=0), grammar='start: "é" /[0-9]+/'),
        ),
        cancellations=(3, 5),
        shutdown=True,
    )
    header, payload = encode(decision)
    assert header.dtype == payload.dtype == np.int64
    assert decode(header, payload) == decision
    quiet = Decision(turn=1)
    header, payload = encode(quiet)
    assert payload.size == 0 and decode(header, payload) == quiet


def test_a_launch_is_recognized_from_what_mlx_launch_exports(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.2:5000"]]))
    assert launched_backend({}) is None and launched_rank({}) is None
    assert launched_backend({"MLX_RANK": "1", "MLX_HOSTFILE": str(hostfile)}) == "ring"
    assert launched_rank({"MLX_RANK": "1", "MLX_HOSTFILE": str(hostfile)}) == 1
    assert launched_backend({"MLX_RANK": "0", "MLX_JACCL_COORDINATOR": "10.0.0.1:5000", "MLX_IBV_DEVICES": "x"}) == "jaccl"
    assert launched_backend({"MLX_RANK": "0", "NCCL_HOST_IP": "10.0.0.1", "NCCL_PORT": "12345"}) == "nccl"
    empty = tmp_path / "empty"
    empty.write_text("\n")  # one host: mlx.launch writes no ring at all
    assert launched_backend({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) is None


def test_each_rank_plans_for_its_share(tiny_model_dir: Path) -> None:
    facts = model_facts(ModelSource(name="tiny", kind="mlx", path=tiny_model_dir))
    half = rank_facts(facts, "tensor", 2, 1)
    assert half.text_config("num_key_value_heads") * 2 == facts.text_config("num_key_value_heads")
    assert half.head_dim == facts.head_dim and half.kv_cost.full * 2 == facts.kv_cost.full
    assert half.weight_bytes == facts.weight_bytes // 2
    settings = load_settings(env={})
    assert plan_for(half, settings).kv_cost.bytes(4096) * 2 == plan_for(facts, settings).kv_cost.bytes(4096)
    with pytest.raises(ModelLoadError, match=r"do not split evenly over 4 ranks.*pipeline"):
        rank_facts(facts, "tensor", 4, 0)  # 2 KV heads
    with pytest.raises(ModelLoadError, match=r"cannot split a llama model for pipeline parallelism; set distributed.parallel = \"tensor\""):
        rank_facts(facts, "pipeline", 2, 0)


def test_pipeline_shares_follow_mlx_lms_split(tmp_path: Path) -> None:
    assert pipeline_split(30, 4) == [8, 8, 7, 7] and sum(pipeline_split(7, 3)) == 7
    config = {"model_type": "qwen2", "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    from pensieve.modelmgr.facts import ModelFacts

    facts = ModelFacts(config=config, quantization="f32", context_length=4096, disk_bytes=0, weight_bytes=1000, activation_bytes=4)
    shares = [rank_facts(facts, "pipeline", 2, r) for r in range(2)]
    assert [s.text_config("num_hidden_layers") for s in shares] == [3, 2]
    assert shares[0].kv_cost.full + shares[1].kv_cost.full == facts.kv_cost.full


def test_the_watchdog_calls_out_a_missed_deadline_and_only_that() -> None:
    expired: list[str] = []
    done = threading.Event()
    watchdog = Watchdog(lambda reason: (expired.append(reason), done.set()))
    with watchdog.guard("a quick step", 5):
        pass
    with watchdog.guard("a slow collective", 0.3):
        assert done.wait(5)
    time.sleep(0.3)
    assert expired == ["a slow collective took more than 0.3s"]
    watchdog.stop()
