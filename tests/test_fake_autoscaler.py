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
