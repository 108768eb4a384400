"""A private Ray cluster with the fake multi-node autoscaler, for tests.

API::

    from fake_cluster import fake_cluster        # tests/ is on sys.path under pytest

    with fake_cluster(head_cpus=2) as fc:         # returns once the head is up (15-40 s here)
        r = fc.run_python("import ray; ray.init(); ...")       # a client, env=fc.env
        r = subprocess.run(["crpo-ray", "train", ...], env=fc.env)  # or any Ray program
        fc.fake_nodes("rollout")                  # fake worker nodes running now, with that resource
        fc.wait_for_nodes(2, "rollout", timeout=90)   # -> seconds until exactly 2 run
    # here every process of that cluster (head, monitor, fake nodes, workers) is gone

``fake_cluster(config=..., head_cpus=2, head_resources=None, env=None, start_timeout=180,
attempts=2, temp_dir=None)``:

* ``config``: an autoscaler YAML for the ``fake_multinode`` provider (default
  ``cluster/fake-multinode.yaml``: head + node type ``rollout`` with resource ``rollout``,
  min 0 max 2, idle timeout 6 s). A copy with ``provider.gcs_address`` set to this head (and
  the head's CPU count) goes into the cluster's private directory.
* The head runs ``ray start --head --node-ip-address 127.0.0.1 --port <free port>`` with
  ``RAY_FAKE_CLUSTER=1``, ``AUTOSCALER_UPDATE_INTERVAL_S=1``, every port free-picked (GCS,
  dashboard on 127.0.0.1, client server, agents, metrics, autoscaler metrics), and
  ``--temp-dir`` a new private directory under /tmp (or ``temp_dir``, which must not exist;
  keep it short: Unix socket paths under it must stay below 108 bytes).
* Authentication: ``RAY_AUTH_MODE`` from ``env``/``os.environ``, ``token`` when unset. In
  token mode the cluster gets a token of its own (a file in its private directory, named by
  ``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``.
* Clients connect from subprocesses with ``env=fc.env`` (``RAY_ADDRESS``, auth variables and
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). That last variable matters: Ray rewrites a loopback
  bootstrap address to the host's IP unless it is set before Ray is imported, and this
  cluster listens on 127.0.0.1 only; it also makes the fake nodes bind 127.0.0.1. So do not
  ``ray.init(fc.address)`` in the pytest process itself.
* On exit it never runs ``ray stop`` (in Ray 2.60 that stops every Ray process of this user
  on the machine, other people's clusters included); it terminates exactly the processes
  whose command line names a session in this cluster's directory, and their children, then
  removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import ray  # noqa: F401 - first: Ray bundles psutil and puts it on sys.path
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "cluster" / "fake-multinode.yaml"
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeCluster:
    address: str
    temp_dir: Path
    config_path: Path
    env: Dict[str, str] = field(default_factory=dict)

    def processes(self) -> List[psutil.Process]:
        return cluster_processes(self.temp_dir)

    def fake_nodes(self, resource: Optional[str] = None) -> int:
        """Running fake worker nodes (raylets other than the head's), optionally only those offering
        ``resource``: read from the processes, so it needs no Ray connection in this process."""
        count = 0
        for proc in self.processes():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if not args or not args[0].endswith("raylet") or any(a.endswith("--head") for a in args):
                continue
            if any(a.startswith("--node_id=") and a.endswith("00000") for a in args):
                continue  # the head (the fake provider numbers it ...00000)
            if resource is None or any(a.startswith("--static_resource_list=") and f",{resource}," in
                                       f",{a.split('=', 1)[1]}," for a in args):
                count += 1
        return count

    def wait_for_nodes(self, count: int, resource: Optional[str] = None, timeout: float = 120,
                       poll: float = 0.5) -> float:
        """Wait until exactly ``count`` fake nodes (with ``resource``) run; return the seconds taken."""
        start = time.monotonic()
        while True:
            seen = self.fake_nodes(resource)
            if seen == count:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{count} fake nodes with '{resource}' not reached in {timeout}s (now {seen})\n"
                                   + self.monitor_log_tail())
            time.sleep(poll)

    def run_python(self, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``python -c code`` against this cluster (``RAY_ADDRESS`` set; ``ray.init()`` connects)."""
        return subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def monitor_log_tail(self, chars: int = 3000) -> str:
        logs = sorted(self.temp_dir.glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else "(no monitor.log)"


def cluster_processes(temp_dir: Path) -> List[psutil.Process]:
    """Processes whose command line names a session under ``temp_dir``, plus their descendants
    (never this process or its parents)."""
    key = f"{temp_dir}{os.sep}session_"
    found: Dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(key in arg for arg in (proc.info["cmdline"] or [])):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    me = psutil.Process()
    for proc in [me, *me.parents()]:
        found.pop(proc.pid, None)
    return list(found.values())


def stop_cluster(temp_dir: Path, grace: float = 5.0) -> int:
    """Terminate this cluster's processes only (SIGTERM, then SIGKILL after ``grace`` s)."""
    killed = 0
    for _ in range(3):  # processes can start while others stop (workers, restarted agents)
        procs = cluster_processes(temp_dir)
        if not procs:
            break
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        killed += len(procs)
    return killed


def _write_config(src: Path, dst: Path, gcs_address: str, head_cpus: int) -> None:
    cfg = yaml.safe_load(src.read_text())
    cfg["provider"]["gcs_address"] = gcs_address
    head = cfg["available_node_types"][cfg["head_node_type"]]
    head["resources"] = dict(head.get("resources", {}), CPU=head_cpus)
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _auth_env(mode: str, temp_dir: Path) -> Dict[str, str]:
    """Set the mode explicitly on both sides; a token of this cluster's own, never ~/.ray/auth_token."""
    if mode.lower() != "token":
        return {"RAY_AUTH_MODE": mode}
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token = temp_dir / "auth_token"
    token.write_text(generate_new_authentication_token())
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def _start_head(temp_dir: Path, config: Path, head_cpus: int, head_resources: Optional[dict],
                base_env: Dict[str, str], timeout: float) -> FakeCluster:
    """One ``ray start --head`` on fresh ports; raises RuntimeError with its output on failure."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    cfg_path = temp_dir / "autoscaler.yaml"
    _write_config(Path(config), cfg_path, address, head_cpus)
    run_env = dict(base_env, AUTOSCALER_METRIC_PORT=str(free_port()))
    cmd = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           f"--autoscaling-config={cfg_path}", f"--temp-dir={temp_dir}", f"--num-cpus={head_cpus}",
           "--include-dashboard=false", "--disable-usage-stats",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()),
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
    if head_resources:
        cmd.append(f"--resources={json.dumps(head_resources)}")
    r = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"ray start failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return FakeCluster(address=address, temp_dir=temp_dir, config_path=cfg_path,
                       env=dict(run_env, RAY_ADDRESS=address))


@contextmanager
def fake_cluster(config: Path = DEFAULT_CONFIG, head_cpus: int = 2, head_resources: Optional[dict] = None,
                 env: Optional[Dict[str, str]] = None, start_timeout: float = 180,
                 attempts: int = 2, temp_dir: Optional[Path] = None) -> Iterator[FakeCluster]:
    """Start a private fake-autoscaling Ray cluster on 127.0.0.1; always stop it (see module doc).

    ``attempts``: Ray gives a starting raylet a fixed 30 s to register, which an overloaded
    2-core machine can miss; a failed start is cleaned up and retried on fresh ports.
    """
    if temp_dir is None:
        temp_dir = Path(tempfile.mkdtemp(prefix="crpo-fc-", dir="/tmp"))  # short: Unix socket paths
    else:
        temp_dir = Path(temp_dir)
        temp_dir.mkdir(parents=True)  # a new directory: everything in it is this cluster's
    base_env = dict(os.environ if env is None else env)
    base_env.pop("RAY_ADDRESS", None)
    base_env.pop("RAY_AUTH_TOKEN", None)
    base_env.update(_auth_env(base_env.get("RAY_AUTH_MODE") or "token", temp_dir))
    base_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                    PATH=f"{Path(RAY).parent}{os.pathsep}{base_env.get('PATH', '')}")
    try:
        for attempt in range(1, attempts + 1):
            try:
                cluster = _start_head(temp_dir, config, head_cpus, head_resources, base_env, start_timeout)
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                stop_cluster(temp_dir)
                if attempt == attempts:
                    raise
        yield cluster
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
