"""(5) Learner memory: peak resident memory per FSDP2 learner worker, 1 vs 2 workers.

Each worker is a spawned process in a gloo process group on 127.0.0.1 (free port) that
loads the policy exactly as the learner does (``crpo_ray.actors.learner.load_policy``:
HF load, then ``fully_shard`` per decoder layer and the root), builds AdamW, and runs
one forward, backward and optimizer step over its share of a fixed global batch.
Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end, so it includes the load.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from pathlib import Path

from benchmarks.common import available_gib, count_params, model_dir, verdict

TARGET = 0.65


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _worker(rank: int, world: int, port: int, path: str, global_batch: int, seq_len: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from crpo_ray.actors.learner import load_policy

    base = _rss_gib()
    model = load_policy(path)
    after_load = _rss_gib()
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, model.config.vocab_size, (global_batch // world, seq_len), generator=g)
    t = time.perf_counter()
    loss = model(input_ids=ids).logits.float().log_softmax(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t
    dist.barrier()
    res = {"rank": rank, "rss_base_gib": base, "rss_after_load_gib": after_load, "peak_after_load_gib": peak_load,
           "rss_end_gib": _rss_gib(), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "step_s": step_s}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(path: Path, world: int, global_batch: int, seq_len: int, work: Path) -> dict:
    import torch.multiprocessing as mp

    out = work / f"mem-{world}"
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    mp.spawn(_worker, args=(world, _free_port(), str(path), global_batch, seq_len, str(out)), nprocs=world, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    return {"workers": world, "peak_rss_gib": max(r["peak_rss_gib"] for r in ranks), "ranks": ranks}


def run(size: str, work: Path, global_batch: int = 4, seq_len: int = 256) -> dict:
    path = model_dir(size)
    params = count_params(path)
    need = params * 16 / 2**30 * 1.5 + 2.0
    if available_gib() < need:
        return {"skipped": f"needs ~{need:.1f} GiB free, {available_gib():.1f} GiB available"}
    one = measure(path, 1, global_batch, seq_len, work)
    two = measure(path, 2, global_batch, seq_len, work)
    ratio = two["peak_rss_gib"] / one["peak_rss_gib"]
    base = min(r["rss_base_gib"] for r in one["ranks"] + two["ranks"])
    above = (two["peak_rss_gib"] - base) / (one["peak_rss_gib"] - base)
    print(f"[bench] memory {size}: 1 worker {one['peak_rss_gib']:.2f} GiB, 2 workers {two['peak_rss_gib']:.2f} GiB "
          f"per worker, ratio {ratio:.2f}", flush=True)
    return {"model": size, "params": params, "global_batch": global_batch, "seq_len": seq_len,
            "one": one, "two": two, "ratio": ratio, "ratio_above_process_baseline": above,
            "process_baseline_gib": base, "target": TARGET, "verdict": verdict(ratio, TARGET)}
