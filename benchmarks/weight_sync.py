"""(1) Weight sync against its floor.

One sync is what the learner's publisher does each step: wrap the full state dict's
tensors (no copy), one ``ray.put``, every rollout worker (the real ``RolloutActor`` with
its HF engine) loads it. The packed layout (one buffer per dtype: one more copy) is
timed in the same run for comparison. The floor is one write of the packed bytes plus one read
per rollout worker at the memcpy bandwidth measured in this process just before.
"""

from __future__ import annotations

import gc
import resource
import time
from typing import Dict, List

from benchmarks.common import REPO, available_gib, count_params, median, memcpy_gbps, model_dir, verdict

TARGET = 2.0


def _state_dict(path) -> Dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    return state


def _page_faults() -> int:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_minflt + use.ru_majflt


def _time_syncs(state, workers, repeats: int, layout: str) -> List[dict]:
    import ray

    from crpo_ray.weights import pack_state_dict, share_state_dict

    rows: List[dict] = []
    packed = None
    warmup = 2  # steady state, as in training: the object store's pages touched, buffers reused
    for v in range(1, repeats + warmup + 1):
        t0 = time.perf_counter()
        packed = share_state_dict(state, v) if layout == "shared" else pack_state_dict(state, v, reuse=packed)
        faults0, t1 = _page_faults(), time.perf_counter()
        ref = ray.put(packed)
        t2, faults = time.perf_counter(), _page_faults() - faults0
        reports = ray.get([w.load_weights.remote(ref, v) for w in workers])
        t3 = time.perf_counter()
        assert all(r["version"] == v for r in reports)
        del ref
        rows.append({"pack_s": t1 - t0, "put_s": t2 - t1, "load_s": t3 - t2, "total_s": t3 - t0, "put_faults": faults,
                     "worker_load_s": max(r["seconds"] for r in reports)})
    return rows[warmup:]


def _one(path, n_workers: int, repeats: int, cfg) -> dict:
    """The train loop's layout (shared: no pack copy) and the packed one, timed in the same run."""
    import ray

    from crpo_ray.actors.rollout import RolloutActor

    state = _state_dict(path)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    workers = [RolloutActor.options(num_cpus=0).remote(f"rollout-{i}", str(path), cfg.model, cfg.rollout, 1, i)
               for i in range(n_workers)]
    try:
        ray.get([w.get_version.remote() for w in workers])
        gbps = memcpy_gbps(nbytes)
        shared = _time_syncs(state, workers, repeats, "shared")
        packed = _time_syncs(state, workers, repeats, "packed")
    finally:
        for w in workers:
            ray.kill(w)
    floor = nbytes * (1 + n_workers) / (gbps * 1e9)
    sync = median([r["total_s"] for r in shared])
    packed_s = median([r["total_s"] for r in packed])
    return {"bytes": nbytes, "workers": n_workers, "memcpy_gbps": gbps, "floor_s": floor, "sync_s": sync,
            "pack_s": median([r["pack_s"] for r in shared]), "put_s": median([r["put_s"] for r in shared]),
            "load_s": median([r["load_s"] for r in shared]),
            "worker_load_s": median([r["worker_load_s"] for r in shared]),
            "packed_layout": {"sync_s": packed_s, "ratio": packed_s / floor,
                              "pack_s": median([r["pack_s"] for r in packed]),
                              "put_s": median([r["put_s"] for r in packed]),
                              "load_s": median([r["load_s"] for r in packed])},
            "ratio": sync / floor, "target": TARGET, "verdict": verdict(sync / floor, TARGET), "repeats": len(shared),
            # every timed sync: a put into freshly allocated object-store memory pays a page fault
            # per page, so single syncs vary; the faults show which puts did
            "sync_s_each": [r["total_s"] for r in shared], "put_s_each": [r["put_s"] for r in shared],
            "put_page_faults_each": [r["put_faults"] for r in shared]}


def run(sizes: List[str], workers: List[int], repeats: int) -> dict:
    from crpo_ray.config import load_config

    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
    out = []
    for size in sizes:
        path = model_dir(size)
        params = count_params(path)
        for n in workers:
            need = params * 4 * (3 + n) / 2**30 * 1.2  # state + packed + object store + n engines
            if available_gib() < need:
                out.append({"model": size, "params": params, "workers": n,
                            "skipped": f"needs ~{need:.1f} GiB free, {available_gib():.1f} GiB available"})
                continue
            res = _one(path, n, repeats, cfg)
            out.append({"model": size, "params": params, **res})
            print(f"[bench] weight_sync {size} ({params / 1e6:.1f}M) x{n}: {res['sync_s'] * 1e3:.1f} ms, "
                  f"floor {res['floor_s'] * 1e3:.1f} ms, ratio {res['ratio']:.2f}", flush=True)
            gc.collect()
    return {"target": f"sync time <= {TARGET}x floor (one write + one read per worker at memcpy bandwidth)",
            "path": "share_state_dict (tensors wrapped, no copy) -> one ray.put -> RolloutActor.load_weights on every "
                    "worker (driver calls the workers directly; the train loop goes through FleetActor.sync_weights, "
                    "one more RPC hop); packed_layout: the same with pack_state_dict (one extra copy) instead",
            "rows": out}
