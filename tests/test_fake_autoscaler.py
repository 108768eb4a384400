"""Ray's fake multi-node autoscaler on this machine: rollout nodes scale 0 -> 2 -> 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fake_cluster import cluster_processes, fake_cluster

# A client of the cluster: ask the autoscaler for two `rollout` bundles, place one actor per
# rollout node, then drop the request and the actors. It reports what Ray itself sees.
PROBE = """
import json, time, ray
from ray.autoscaler.sdk import request_resources

def rollout_nodes():
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("rollout", 0) > 0]

def wait(k, timeout=150):
    t = time.monotonic()
    while len(rollout_nodes()) != k:
        assert time.monotonic() - t < timeout, f"{len(rollout_nodes())} rollout nodes, wanted {k}"
        time.sleep(0.5)
    return round(time.monotonic() - t, 1)

@ray.remote(num_cpus=0, resources={"rollout": 1})
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()

ray.init(log_to_driver=False)
out = {"before": len(rollout_nodes())}
request_resources(bundles=[{"rollout": 1}] * 2)
out["up_s"] = wait(2)
probes = [Probe.remote() for _ in range(2)]
out["probe_nodes"] = ray.get([p.node.remote() for p in probes])
out["rollout_node_ids"] = [n["NodeID"] for n in rollout_nodes()]
out["node_ips"] = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]})
request_resources(bundles=[])
for p in probes:
    ray.kill(p)
out["down_s"] = wait(0)
print("PROBE " + json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_rollout_nodes_scale_up_and_down():
    t0 = time.monotonic()
    with fake_cluster(head_cpus=2) as fc:
        started = time.monotonic() - t0
        assert fc.fake_nodes() == 0  # min_workers 0: only the head at first
        probe = subprocess.Popen([sys.executable, "-c", PROBE], env=fc.env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            seen_up = fc.wait_for_nodes(2, "rollout", timeout=150)  # the helper sees the raylets too
            stdout, stderr = probe.communicate(timeout=250)
        finally:
            probe.kill()
        lines = [x for x in stdout.splitlines() if x.startswith("PROBE ")]
        assert probe.returncode == 0 and lines, stdout[-2000:] + stderr[-3000:] + fc.monitor_log_tail()
        out = json.loads(lines[0][len("PROBE "):])
        assert out["before"] == 0
        # the two actors landed on the two new rollout nodes, one each
        assert sorted(out["probe_nodes"]) == sorted(out["rollout_node_ids"]) and len(set(out["probe_nodes"])) == 2
        assert out["node_ips"] == ["127.0.0.1"]  # fake nodes on loopback too
        assert fc.fake_nodes("rollout") == 0  # the raylet processes are gone, not just marked dead
        temp_dir = fc.temp_dir
    assert cluster_processes(temp_dir) == [] and not temp_dir.exists()
    print(f"fake autoscaler: start {started:.1f}s, up {out['up_s']}s (raylets seen {seen_up:.1f}s), down {out['down_s']}s, "
          f"total {time.monotonic() - t0:.1f}s")


@pytest.mark.slow
def test_training_scales_rollout_nodes_up_and_down(tiny_model_dir, tmp_path):
    """A training run on the fake autoscaler: the elastic pool starts rollout nodes 0 -> 2
    while prompt groups wait and retires idle workers while the learner trains (starting
    new ones for the next step), the idle nodes go away, and the run still trains every
    prompt of every step once."""
    from pathlib import Path

    from test_fault_tolerance import _assert_each_prompt_once

    steps = 4
    cli = str(Path(sys.executable).parent / "crpo-ray")
    with fake_cluster(head_cpus=4) as fc:
        args = [f"cluster.address={fc.address}", f"model.path={tiny_model_dir}", f"run.output_dir={tmp_path}",
                f"run.total_steps={steps}", "rollout.num_workers=1", "rollout.min_workers=0",
                "rollout.max_workers=2", "rollout.chunk_groups=1", "rollout.scale_up_after_s=1",
                "rollout.scale_down_idle_s=2", "rollout.max_new_tokens=64", "cluster.rollout_resources.rollout=1",
                "learner.micro_batch_size=1",  # a longer learner phase: idle rollout workers retire in it
                "checkpoint.every=2", "logging.tensorboard=false"]
        log = tmp_path / "train.log"
        proc = subprocess.Popen([cli, "train", "--config", "configs/tiny-cpu.yaml", *args], env=fc.env,
                                cwd=Path(__file__).resolve().parents[1], stdout=open(log, "w"),
                                stderr=subprocess.STDOUT)
        counts = []  # rollout nodes seen while the run goes on
        try:
            while proc.poll() is None:
                counts.append(fc.fake_nodes("rollout"))
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, log.read_text()[-4000:]
        after = []  # and once it is over: idle rollout nodes go away (idle timeout 6 s)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not after or after[-1] > 0):
            after.append(fc.fake_nodes("rollout"))
            time.sleep(0.5)
    rows = [json.loads(x) for x in (tmp_path / "tiny-cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(steps))
    assert counts[0] == 0 and max(counts) == 2, counts  # from no rollout node up to two under load ...
    assert after[-1] == 0, after  # ... and back to none when idle
    # the pool itself retired idle workers during the run and started new ones for later steps
    assert rows[-1]["scale_ups"] >= 2 and rows[-1]["scale_downs"] >= 1, rows[-1]
    assert all(r["policy_versions"] == [r["step"]] for r in rows)  # new workers loaded the weights first
    _assert_each_prompt_once(tmp_path / "tiny-cpu", steps)
    print("rollout nodes over the run:", counts, "after it:", after)
