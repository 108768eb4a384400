"""Shared helpers: machine key and versions, memcpy bandwidth, random-weight models, Ray start."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"

# Random-weight Qwen3 models built offline by crpo_ray.tiny (vocab 2048, tied embeddings).
MODEL_ARCHS: Dict[str, dict] = {
    "tiny": {},  # crpo_ray.tiny.TINY_ARCH
    "2m": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32),
    "10m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=32),
    "100m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, head_dim=64),
    "500m": dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=14, num_attention_heads=12,
                 num_key_value_heads=4, head_dim=128),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def machine_key() -> str:
    """A hostname-free id: accelerator or CPU model, plus core count (e.g. cpu-amd-epyc-7b13-2c)."""
    gpu = gpu_name()
    name = gpu if gpu else cpu_model()
    slug = "".join(c if c.isalnum() else "-" for c in name.lower())
    slug = "-".join(p for p in slug.split("-") if p and p not in ("processor", "r", "tm", "cpu", "with"))[:40]
    kind = "gpu" if gpu else "cpu"
    return f"{kind}-{slug}-{os.cpu_count()}c"


def environment() -> dict:
    import importlib.metadata as md

    import torch

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    mem = _meminfo()
    return {
        "machine_key": machine_key(), "cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name() or None,
        "mem_total_gib": mem.get("MemTotal", 0) / 2**20, "mem_available_gib_at_start": mem.get("MemAvailable", 0) / 2**20,
        "loadavg_at_start": list(load), "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "versions": {p: ver(p) for p in ("torch", "ray", "transformers", "trl", "accelerate", "pyarrow", "vllm")},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _meminfo() -> Dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])  # kB
    except (OSError, ValueError):
        pass
    return out


def available_gib() -> float:
    return _meminfo().get("MemAvailable", 0) / 2**20


def memcpy_gbps(nbytes: int, repeats: int = 5) -> float:
    """Best-of copy bandwidth (bytes copied per second / 1e9) for a buffer of ``nbytes``."""
    n = max(int(nbytes), 1 << 20)
    src = np.ones(n, dtype=np.uint8)
    dst = np.empty_like(src)
    return n / best_of(lambda: np.copyto(dst, src), repeats) / 1e9


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median(values: List[float]) -> float:
    vals = sorted(v for v in values if v == v)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def model_dir(size: str, seed: int = 0) -> Path:
    """A random-weight model of the named size, built once into .cache/bench (offline)."""
    from crpo_ray.tiny import RECIPE_VERSION, TINY_ARCH, build_tiny_model

    arch = MODEL_ARCHS[size]
    tag = hashlib.sha256(json.dumps({**TINY_ARCH, **arch}, sort_keys=True).encode()).hexdigest()[:8]
    target = CACHE / f"qwen3-{size}-r{RECIPE_VERSION}-s{seed}-{tag}"
    if not (target / "crpo_ray_tiny.json").is_file():
        build_tiny_model(target, seed=seed, **arch)
    return target


def count_params(path: Path) -> int:
    """Parameters stored in a model directory's safetensors files (tied weights once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += int(np.prod(st.get_slice(k).get_shape()))
    return total


def init_ray(num_cpus: int) -> None:
    """An embedded Ray on loopback with free ports (RAY_AUTH_MODE=token works unchanged)."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}}
    # address="local": never join another cluster found via /tmp/ray/ray_current_cluster
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, include_dashboard=False, namespace="crpo-bench",
             runtime_env=env, log_to_driver=False, configure_logging=False)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    if value != value:
        return "N/A"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"
