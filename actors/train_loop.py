"""The step, top to bottom: get batch, update, publish weights, evaluate, checkpoint.

``train_loop_per_worker`` runs on every Ray Train worker (one learner rank each).
Rank 0 also publishes weights, writes metrics and reports checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from crpo_ray import schemas
from crpo_ray.algo import stage_betas_from_config
from crpo_ray.batching import batch_from_table
from crpo_ray.weights import share_state_dict
from crpo_ray.actors import checkpoint as ckpt_io
from crpo_ray.actors.learner import (LossParams, full_optimizer_state, full_state_dict, load_optimizer_state,
                                     load_policy, lr_lambda, train_step)


class _Publisher:
    """Rank 0: gather the full state dict, one ray.put of its tensors, every rollout worker loads it.

    The tensors are wrapped, not packed (:func:`share_state_dict`), so the put is the
    only copy between the gathered state dict and the object store.
    """

    def __init__(self, fleet, rank: int, wait: bool = True):
        self.fleet, self.rank, self.wait = fleet, rank, wait

    def __call__(self, model, version: int):
        """Returns (metrics, the full state dict published: rank 0 only, {} elsewhere)."""
        t0 = time.perf_counter()
        state = full_state_dict(model)
        if self.rank != 0:
            return {}, state
        t1 = time.perf_counter()
        packed = share_state_dict(state, version)
        ref = ray.put(packed)
        t2 = time.perf_counter()
        report = ray.get(self.fleet.sync_weights.remote([ref], version, self.wait))
        if any(v != version for v in report["versions"]):
            raise RuntimeError(f"rollout workers report versions {report['versions']}, expected {version}")
        t3 = time.perf_counter()
        del ref
        return {"sync_gather_s": t1 - t0, "sync_put_s": t2 - t1, "sync_load_s": t3 - t2, "sync_bytes": packed.nbytes,
                "sync_gbps": packed.nbytes / max(t3 - t1, 1e-9) / 1e9, "weights_version": version,
                "worker_versions": report["versions"]}, state


def _truncate_log(path: Path, start: int) -> None:
    """Keep the rows of steps before ``start``: a resumed or restarted run logs the later ones again.

    A row cut short by a killed process is dropped too. Rewritten atomically.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] < start:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    tmp.replace(path)


class _MetricsSink:
    def __init__(self, run_dir: Path, tensorboard: bool, start: int = 0):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "prompts.jsonl", "samples.jsonl"):
            _truncate_log(run_dir / name, start)
        self.metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.prompts = open(run_dir / "prompts.jsonl", "a", encoding="utf-8")
        self.samples = open(run_dir / "samples.jsonl", "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write_samples(self, samples) -> None:
        """A few completions of the step, with tokens, entropies and stage ids (for ``crpo-ray report``)."""
        self.samples.writelines(json.dumps(s) + "\n" for s in samples or [])
        self.samples.flush()

    def write(self, step: int, metrics: dict, example_ids) -> None:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        self.metrics.write(json.dumps({"step": step, **clean}) + "\n")
        self.metrics.flush()
        self.prompts.write(json.dumps({"step": step, "example_ids": example_ids}) + "\n")
        self.prompts.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)


def _setup(config, rank: int):
    cfg = config["cfg"]
    device = ray.train.torch.get_device() if cfg.learner.use_gpu else torch.device("cpu")
    start, src, optim_state, sched_state = 0, config["model_dir"], None, None
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts the worker group
    if checkpoint is None and config.get("resume_from"):  # `crpo-ray train --resume`
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            src, optim_state, state = ckpt_io.read_checkpoint(d)
        start, sched_state = state["step"], state.get("scheduler")
    dtype = "bfloat16" if cfg.learner.bf16 else "float32"
    kw = dict(dtype=dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    model = load_policy(str(src), gradient_checkpointing=cfg.learner.gradient_checkpointing, **kw)
    ref_model = load_policy(config["model_dir"], trainable=False, **kw) if cfg.algorithm.kl_beta > 0 else None
    lc = cfg.learner
    optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=(lc.adam_beta1, lc.adam_beta2),
                                  weight_decay=lc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(lc.lr_schedule, lc.warmup_steps, cfg.run.total_steps))
    if optim_state is not None:
        load_optimizer_state(model, optimizer, optim_state)
    if sched_state is not None:
        scheduler.load_state_dict(sched_state)
    return cfg, device, start, model, ref_model, optimizer, scheduler


def train_loop_per_worker(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    torch.manual_seed(config["cfg"].run.seed)
    cfg, device, start, model, ref_model, optimizer, scheduler = _setup(config, rank)
    sync = cfg.cluster.mode == "sync"
    fleet, publish = config["fleet"], _Publisher(config["fleet"], rank, wait=sync)
    pad_id = config["pad_id"]
    # Async: samples come from older weights; algorithm.off_policy says how the loss corrects for it.
    algo = cfg.algorithm
    params = LossParams(stage_betas_from_config(algo, len(cfg.stage_names)), algo.clip_low, algo.clip_high,
                        algo.kl_beta, algo.aggregation, cfg.rollout.temperature, cfg.rollout.max_new_tokens,
                        algo.recompute_old_logprobs, None if sync else algo.off_policy, algo.is_cap,
                        algo.entropy_ceiling)
    sink = _MetricsSink(Path(config["run_dir"]), cfg.logging.tensorboard, start) if rank == 0 else None
    if rank == 0:  # a (re)started worker group: the fleet drops work queued for another timeline
        ray.get(fleet.reset.remote(start))
    publish(model, start)  # rollout workers start from the learner's weights
    dist.barrier()
    for step in range(start, cfg.run.total_steps):
        t0, ts0 = time.perf_counter(), time.time()
        shard, fleet_m = ray.get(fleet.shard.remote(step, rank, world))
        schemas.validate(shard, schemas.SCORED, f"learner rank {rank} input")
        t1 = time.perf_counter()
        train_m = train_step(model, ref_model, optimizer, scheduler, batch_from_table(shard, pad_id), params,
                             micro_batch_size=cfg.learner.micro_batch_size, grad_clip=cfg.learner.grad_clip, device=device)
        t2 = time.perf_counter()
        sync_m, state = publish(model, step + 1)
        dist.barrier()
        t3 = time.perf_counter()
        if sink is not None:
            sink.write_samples(fleet_m.get("samples"))
        metrics = {**{k: v for k, v in fleet_m.items() if k not in ("example_ids", "samples")}, **train_m, **sync_m,
                   "time_wait_batch": t1 - t0, "time_train": t2 - t1, "time_sync": t3 - t2,
                   "ts_step_start": ts0}  # wall clock, for timelines
        done = step + 1
        eval_due = done == cfg.run.total_steps or (cfg.run.eval_every and done % cfg.run.eval_every == 0)
        if rank == 0 and eval_due:
            metrics.update(_eval_metrics(fleet, cfg))
        metrics["time_step"] = time.perf_counter() - t0
        _finish_step(config, rank, step, done, metrics, fleet_m["example_ids"], state, model, optimizer,
                     scheduler, sink)
        del state


def _eval_metrics(fleet, cfg) -> dict:
    t = time.perf_counter()
    ev = ray.get(fleet.evaluate.remote(cfg.run.eval_max_examples))
    out = {"time_eval": time.perf_counter() - t}
    if ev:
        out["eval_f1"] = ev["mean_weighted_f1"]
        out["eval_unparseable"] = ev["unparseable"]
        for d, s in ev["datasets"].items():
            out[f"eval_f1/{d}"] = s["weighted_f1"]
    return out


def _finish_step(config, rank, step, done, metrics, example_ids, state, model, optimizer, scheduler, sink) -> None:
    """Log, and checkpoint when due; ``state`` is the full state dict just published (rank 0)."""
    cfg = config["cfg"]
    # Sync: the step is generate, score, train, sync, eval in turn. Async: generation overlaps
    # training, so the learner's own view is waiting for the batch, training, sync and eval.
    parts = ("time_generate", "time_score") if cfg.cluster.mode == "sync" else ("time_wait_batch",)
    metrics["time_overhead"] = metrics["time_step"] - sum(
        metrics.get(k, 0.0) for k in parts + ("time_train", "time_sync", "time_eval"))
    save = done == cfg.run.total_steps or (cfg.checkpoint.every and done % cfg.checkpoint.every == 0)
    checkpoint_dir = None
    if save:
        optim_state = full_optimizer_state(model, optimizer)
        if rank == 0:
            trainer_state = {"step": done, "policy_version": done, "scheduler": scheduler.state_dict(),
                             "data_position": done * cfg.rollout.prompts_per_step, "seed": cfg.run.seed}
            checkpoint_dir = ckpt_io.write_checkpoint(state, optim_state, trainer_state, config["model_dir"])
    if rank == 0:
        sink.write(step, metrics, example_ids)
        if cfg.logging.progress:
            f1 = metrics.get("eval_f1")
            # not print(): Ray Train patches it to tee into its logger as well, so every line showed twice
            sys.stdout.write(f"[crpo-ray] step {done}/{cfg.run.total_steps} reward {metrics['reward']:+.3f} "
                             f"acc {metrics['accuracy']:.2f} format {metrics['format_ok']:.2f}"
                             + (f" eval_f1 {f1:.3f}" if f1 is not None else "") + f" step {metrics['time_step']:.1f}s\n")
            sys.stdout.flush()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    scalars["step"] = done
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(scalars, checkpoint=checkpoint)
    if checkpoint_dir is not None:  # Ray Train has persisted its copy under the run directory
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
