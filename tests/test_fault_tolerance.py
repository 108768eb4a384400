"""Failures during training: the run keeps going and every prompt is trained exactly once.

One training run on a three-node loopback cluster (``ray.cluster_utils.Cluster``: a head
with the learner and scorer resources, two nodes with the ``rollout`` resource) takes
three faults in turn: a rollout worker SIGKILLed while it generates, a scorer
SIGKILLed, and a whole node removed. Each test below checks one of them. A separate
run has one of its two FSDP2 learner workers SIGKILLed after a checkpoint: Ray Train
restarts the worker group from it and the run finishes with consistent steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crpo_ray.config import load_config
from crpo_ray.data import load_sources
from crpo_ray.sampler import step_indices
from conftest import REPO
from procs import kill_when, raylet_of, raylets_under, wait_rows, workers

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "crpo-ray")
STEPS = 6


def _rows(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _expected_ids(total: int):
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
    table, _ = load_sources(cfg.data.train)
    ids = table["example_id"].to_pylist()
    return [sorted(ids[i] for i in step_indices(s, cfg.rollout.prompts_per_step, len(ids), cfg.data.shuffle_seed))
            for s in range(total)]


def _assert_each_prompt_once(run_dir: Path, total: int):
    prompts = _rows(run_dir / "prompts.jsonl")
    assert [p["step"] for p in prompts] == list(range(total))
    assert [sorted(p["example_ids"]) for p in prompts] == _expected_ids(total)
    for p in prompts:
        assert len(p["example_ids"]) == len(set(p["example_ids"]))


def _start_training(args, log: Path):
    cmd = [CLI, "train", "--config", "configs/tiny-cpu.yaml", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _finish(proc, log: Path, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def faulty_run(tiny_model_dir, tmp_path_factory):
    """Train on a 3-node cluster while a rollout worker, a scorer and a node are killed."""
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("faults")
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        node_ip_address="127.0.0.1", num_cpus=4, resources={"learner": 2, "scorer": 2}, include_dashboard=False,
        _system_config=fast))
    nodes = [cluster.add_node(node_ip_address="127.0.0.1", num_cpus=2, resources={"rollout": 2}) for _ in range(2)]
    out = {"tmp": tmp, "events": {}}
    try:
        args = [f"cluster.address={cluster.address}", f"model.path={tiny_model_dir}", f"run.output_dir={tmp}",
                f"run.total_steps={STEPS}", "rollout.num_workers=2", "rollout.num_scorers=2",
                "rollout.chunk_groups=1", "rollout.max_new_tokens=64", "rollout.scale_down_idle_s=600",
                "cluster.rollout_placement=spread", "cluster.rollout_resources.rollout=1",
                "cluster.learner_resources.learner=1", "cluster.scorer_resources.scorer=1", "logging.tensorboard=false"]
        log = tmp / "train.log"
        proc = _start_training(args, log)
        metrics = tmp / "tiny-cpu" / "metrics.jsonl"
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in [cluster.head_node, *nodes]}
        try:
            wait_rows(metrics, 1, proc)
            pid = kill_when(raylets, "ray::RolloutWorker.generate")
            out["events"]["rollout"] = {"pid": pid, "after_rows": len(_rows(metrics))}
            wait_rows(metrics, 3, proc)
            pid = kill_when(raylets, "ray::Scorer", exact=False)
            out["events"]["scorer"] = {"pid": pid, "after_rows": len(_rows(metrics))}
            wait_rows(metrics, 4, proc)
            victim = workers(raylets, "ray::RolloutWorker")[0]
            node = raylets[raylet_of(victim)]
            assert node is not cluster.head_node
            cluster.remove_node(node, allow_graceful=False)
            out["events"]["node"] = {"after_rows": len(_rows(metrics))}
            _finish(proc, log)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out["rows"] = _rows(metrics)
        out["log"] = log.read_text()
        yield out
    finally:
        cluster.shutdown()


def test_rollout_worker_killed_mid_generation(faulty_run):
    rows = faulty_run["rows"]
    assert [r["step"] for r in rows] == list(range(STEPS))
    after = faulty_run["events"]["rollout"]["after_rows"]
    events = [e for r in rows[after - 1:] for e in r["fleet_events"]]
    assert any("lost mid-generation" in e and "re-dispatched" in e for e in events), events
    assert rows[-1]["redispatched_groups"] >= 1
    assert all(r["policy_versions"] == [r["step"]] for r in rows)  # the replacements loaded the weights
    _assert_each_prompt_once(faulty_run["tmp"] / "tiny-cpu", STEPS)


def test_scorer_killed(faulty_run):
    rows = faulty_run["rows"]
    assert rows[-1]["scorer_restarts"] >= 1
    events = [e for r in rows for e in r["fleet_events"]]
    assert any(e.startswith("scorer") and "scored again" in e for e in events), events
    _assert_each_prompt_once(faulty_run["tmp"] / "tiny-cpu", STEPS)


def test_node_removed(faulty_run):
    rows = faulty_run["rows"]
    after = faulty_run["events"]["node"]["after_rows"]
    # The removed node's rollout worker is lost; its chunk is generated again by the worker
    # on the other rollout node (the only `rollout` resources left) and a replacement is
    # started there, so the run finishes on the remaining nodes.
    assert rows[-1]["worker_restarts"] >= 2 and rows[-1]["pool_workers"] == 2
    events = [e for r in rows[after - 1:] for e in r["fleet_events"]]
    assert any(" lost (" in e for e in events) and any("below min_workers" in e for e in events), events
    _assert_each_prompt_once(faulty_run["tmp"] / "tiny-cpu", STEPS)


def test_learner_worker_killed_restarts_from_checkpoint(tiny_model_dir, tmp_path):
    args = [f"model.path={tiny_model_dir}", f"run.output_dir={tmp_path}", "run.total_steps=5", "checkpoint.every=2",
            "checkpoint.max_failures=2", "logging.tensorboard=false"]
    log = tmp_path / "train.log"
    proc = _start_training(args, log)
    run_dir = tmp_path / "tiny-cpu"
    try:
        wait_rows(run_dir / "metrics.jsonl", 3, proc)  # the step-2 checkpoint is reported with row 2
        time.sleep(0.5)
        raylets = raylets_under(proc.pid)
        killed = kill_when(raylets, "ray::RayTrainWorker", timeout=30)
        _finish(proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = _rows(run_dir / "metrics.jsonl")
    assert killed and [r["step"] for r in rows] == list(range(5))
    assert rows[-1]["learner_starts"] == 2  # one restart of the worker group
    assert all(r["policy_versions"] == [r["step"]] for r in rows)
    state = json.loads(sorted(run_dir.glob("checkpoint_*/trainer_state.json"), key=os.path.getmtime)[-1].read_text())
    assert state["step"] == 5
    _assert_each_prompt_once(run_dir, 5)
