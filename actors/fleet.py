"""ExperienceFleet: owns the rollout pool and the scorers, hands the learner scored batches.

One asyncio actor (``FleetActor``), called by every learner rank:

* ``reset(step)``: rank 0, when a learner worker group starts (also after a restart
  from a checkpoint): forget queued work and any batch made for another timeline.
* ``sync_weights([ref], version, wait)``: the newest packed weights; every rollout
  worker loads them before its next generation (``wait``: until all have).
* ``shard(step, rank, world)``: that rank's contiguous share (whole groups) of the
  step's scored batch, plus the step's metrics. The first request for a step queues
  its prompts in chunks; in async mode the next ``max_staleness`` steps are queued
  too, so the pool generates them with older weights while the learner trains.
  Every prompt of a step is trained once: a chunk whose worker dies is generated
  again, a scorer that dies is replaced and the chunk scored again, samples older
  than the staleness bound are dropped, counted and generated again.
* ``evaluate(max_examples)``: greedy answers on the held-out split, weighted F1.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from crpo_ray import schemas
from crpo_ray.config import pool_bounds
from crpo_ray.data import class_counts
from crpo_ray.evaluation import evaluate_rows
from crpo_ray.prompts import render_prompt, resolve_system_prompt
from crpo_ray.report import sample_records
from crpo_ray.rewards import balanced_weights
from crpo_ray.sampler import step_indices
from crpo_ray.scheduling import (ScalePolicy, chunk_bounds, default_chunk, plan_horizon, rollout_bundles,
                                 staleness_histogram, staleness_ok)
from crpo_ray.scoring import ScoringParams
from crpo_ray.actors.pool import PoolError, RolloutPool, WorkItem
from crpo_ray.actors.rollout import RolloutActor
from crpo_ray.actors.scorer import ScorerActor


@dataclass
class _Step:
    step: int
    epoch: int
    groups: int
    tables: List[pa.Table] = field(default_factory=list)
    done_groups: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    prepare_s: float = 0.0
    ts_start: float = 0.0  # wall clock when the step was queued, for timelines
    t_first: Optional[float] = None  # first chunk handed to a worker
    t_generated: float = 0.0  # last chunk generated
    t_scored: float = 0.0  # last chunk scored
    generate_s: float = 0.0  # summed over chunks
    score_s: float = 0.0
    dropped_stale: int = 0
    result: Optional[tuple] = None
    fetched: set = field(default_factory=set)


class ExperienceFleet:
    def __init__(self, cfg, model_dir: str, train: pa.Table, evals: pa.Table, threads: int = 1):
        from transformers import AutoTokenizer

        self.cfg, self.model_dir, self.threads = cfg, model_dir, threads
        self.train, self.evals = train, evals
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code)
        self.system_prompt = resolve_system_prompt(cfg.prompt.system_prompt,
                                                   [(s.name, s.description) for s in cfg.prompt.stages])
        self.weights = balanced_weights(class_counts(train)) if cfg.reward.balanced else {}
        self.params = ScoringParams(
            stage_names=cfg.stage_names, group_size=cfg.rollout.group_size, format_value=cfg.reward.format_value,
            accuracy_scale=cfg.reward.accuracy_scale, uncertainty_weight=cfg.reward.uncertainty_weight,
            adv_eps=cfg.algorithm.adv_eps, scale_adv_by_std=cfg.algorithm.scale_adv_by_std, prefilled=cfg.prompt.prefill)
        self.max_staleness = cfg.cluster.max_staleness if cfg.cluster.mode == "async" else 0
        # Async also queues one step beyond the bound, started the moment its weights arrive;
        # sync keeps the step strictly sequential (generate, score, train, sync).
        self.lookahead = 1 if cfg.cluster.mode == "async" else 0
        self.chunk = default_chunk(cfg.rollout.prompts_per_step, cfg.rollout.num_workers, cfg.rollout.chunk_groups)
        self.scorers = [self._new_scorer() for _ in range(cfg.rollout.num_scorers)]
        self._rendered: Dict[tuple, tuple] = {}
        self.steps: Dict[int, _Step] = {}
        self.evals_pending: Dict[int, list] = {}
        self.epoch, self.planned_through, self.resets, self._next_scorer, self._requests = 0, -1, 0, 0, 0
        self.stats_seen: Dict[str, float] = {}
        self.pool: Optional[RolloutPool] = None

    # ------------------------------------------------------------------ actors

    def _new_worker(self, wid: str):
        cfg = self.cfg
        gpu = 1 if cfg.rollout.engine == "vllm" else 0
        opts = dict(num_cpus=1, num_gpus=gpu, resources=dict(cfg.cluster.rollout_resources), max_restarts=0)
        if cfg.cluster.rollout_placement == "spread":
            opts["scheduling_strategy"] = "SPREAD"
        seed = cfg.run.seed + int(wid.rsplit("-", 1)[-1])
        return RolloutActor.options(**opts).remote(wid, self.model_dir, cfg.model, cfg.rollout, self.threads, seed)

    def _new_scorer(self):
        return ScorerActor.options(num_cpus=1, resources=dict(self.cfg.cluster.scorer_resources)).remote(
            self.model_dir, self.params, self.weights, self.cfg.model.trust_remote_code)

    def _request(self, workers: int) -> None:
        from ray.autoscaler.sdk import request_resources

        gpu = 1 if self.cfg.rollout.engine == "vllm" else 0
        request_resources(bundles=rollout_bundles(workers, 1, gpu, self.cfg.cluster.rollout_resources))

    async def _started(self) -> RolloutPool:
        if self.pool is None:
            ro = self.cfg.rollout
            lo, hi = pool_bounds(ro)
            elastic = hi != lo and self.cfg.cluster.request_resources
            self.pool = RolloutPool(
                self._new_worker, ScalePolicy(lo, hi, ro.scale_up_pending, ro.scale_up_after_s, ro.scale_down_idle_s),
                max_staleness=self.max_staleness, max_attempts=ro.max_attempts, on_generated=self._generated,
                request=self._request if elastic else None, log=lambda m: print(f"[crpo-ray] {m}", flush=True))
            self.pool.start(ro.num_workers)
        if self.pool.fatal is not None:
            raise self.pool.fatal
        return self.pool

    # ------------------------------------------------------------------ prompts

    def _prompts(self, table: pa.Table, rows: List[int], key: str, group_base: int = 0) -> pa.Table:
        ids, truncated = [], []
        for r in rows:
            if (key, r) not in self._rendered:
                rp = render_prompt(self.tokenizer, table["instruction"][r].as_py(), table["text"][r].as_py(),
                                   system_prompt=self.system_prompt, stage_names=self.cfg.stage_names,
                                   max_prompt_tokens=self.cfg.prompt.max_prompt_tokens, prefill=self.cfg.prompt.prefill)
                self._rendered[(key, r)] = (rp.token_ids, rp.truncated)
            i, t = self._rendered[(key, r)]
            ids.append(i)
            truncated.append(t)
        idx = pa.array(rows, type=pa.int64())
        return pa.table({
            "example_id": table["example_id"].take(idx), "dataset": table["dataset"].take(idx),
            "label": table["label"].take(idx), "label_set": table["label_set"].take(idx),
            "group_id": pa.array(range(group_base, group_base + len(rows)), type=pa.int64()),
            "prompt_ids": pa.array(ids, type=pa.list_(pa.int32())),
            "prompt_truncated": pa.array(truncated, type=pa.bool_()),
        }, schema=schemas.PROMPTS)

    def _chunks(self, prompts: pa.Table) -> List[pa.Table]:
        return [prompts.slice(a, b - a) for a, b in chunk_bounds(prompts.num_rows, self.chunk)]

    # ------------------------------------------------------------------ training batches

    async def reset(self, step: int) -> dict:
        """A learner worker group starts at ``step``: drop queued work and batches of any other timeline."""
        pool = await self._started()
        self.epoch += 1
        self.resets += 1
        self.steps.clear()
        self.planned_through = step - 1
        await pool.drop_pending()
        return {"epoch": self.epoch, "learner_starts": self.resets}

    async def _plan(self, step: int) -> None:
        cfg = self.cfg
        t = time.perf_counter()
        rows = step_indices(step, cfg.rollout.prompts_per_step, self.train.num_rows, cfg.data.shuffle_seed)
        prompts = self._prompts(self.train, rows, "train")
        st = _Step(step, self.epoch, prompts.num_rows, prepare_s=time.perf_counter() - t, ts_start=time.time())
        self.steps[step] = st
        items = [WorkItem(("train", step, i), step, part, cfg.rollout.group_size, False, self.epoch)
                 for i, part in enumerate(self._chunks(prompts))]
        await self.pool.submit(items)

    def _generated(self, item: WorkItem, table: pa.Table, ref, wid: str, seconds: float) -> None:
        """A chunk came back from a rollout worker (called inside the pool's event loop)."""
        if item.step < 0:
            waiting = self.evals_pending.get(item.key[1])
            if waiting is not None:
                waiting.append(table)
            return
        st = self.steps.get(item.step)
        if st is None or st.epoch != item.epoch:
            return  # made for a timeline that a learner restart abandoned
        now = time.perf_counter()
        st.t_generated = max(st.t_generated, now)
        started = now - seconds
        st.t_first = started if st.t_first is None else min(st.t_first, started)
        st.generate_s += seconds
        asyncio.get_running_loop().create_task(self._score(st, item, ref))

    async def _score(self, st: _Step, item: WorkItem, ref) -> None:
        for attempt in range(self.cfg.rollout.max_attempts):
            i = self._next_scorer % len(self.scorers)
            self._next_scorer += 1
            t = time.perf_counter()
            try:
                scored = await self.scorers[i].score.remote(ref)
                break
            except RayActorError as exc:
                self.pool.stats["scorer_restarts"] += 1
                self.pool.event(f"scorer {i} lost ({type(exc).__name__}); replaced, {item.key} scored again")
                self.scorers[i] = self._new_scorer()
            except Exception as exc:  # noqa: BLE001 - a scorer raised on this input: not retryable
                self.pool._fail(PoolError(f"scorer: {type(exc).__name__}: {exc}"))
                break
        else:
            self.pool._fail(PoolError(f"chunk {item.key}: scorers died {self.cfg.rollout.max_attempts} times"))
        if self.pool.fatal is not None:
            st.done.set()
            return
        if st.epoch != self.epoch:
            return
        st.score_s += time.perf_counter() - t
        st.t_scored = max(st.t_scored, time.perf_counter())
        await self._accept(st, item, scored)

    async def _accept(self, st: _Step, item: WorkItem, scored: pa.Table) -> None:
        """Keep groups within the staleness bound; generate the others again."""
        g = self.cfg.rollout.group_size
        versions = scored["policy_version"].to_pylist()
        ok_groups = [versions[k * g] for k in range(scored.num_rows // g)]
        keep = [k for k, v in enumerate(ok_groups) if staleness_ok(st.step, v, self.max_staleness)]
        if len(keep) < len(ok_groups):
            stale = [k for k in range(len(ok_groups)) if k not in keep]
            st.dropped_stale += len(stale) * g
            again = item.prompts.take(pa.array(stale, type=pa.int64()))
            await self.pool.submit([WorkItem(item.key + ("again",), st.step, again, item.n, False, item.epoch)],
                                   front=True)
            rows = [k * g + j for k in keep for j in range(g)]
            scored = scored.take(pa.array(rows, type=pa.int64()))
        if scored.num_rows:
            st.tables.append(scored)
            st.done_groups += scored.num_rows // g
        if st.done_groups >= st.groups:
            st.done.set()

    async def shard(self, step: int, rank: int, world: int):
        """This rank's contiguous share (whole groups) of the step's scored batch, and the step's metrics."""
        pool = await self._started()
        for s in range(self.planned_through + 1,
                       plan_horizon(step, self.max_staleness, self.cfg.run.total_steps, self.lookahead) + 1):
            await self._plan(s)
            self.planned_through = s
        st = self.steps.get(step)
        if st is None:
            raise PoolError(f"step {step} was requested but not planned (planned through {self.planned_through})")
        await st.done.wait()
        if pool.fatal is not None:
            raise pool.fatal
        if st.result is None:
            st.result = self._assemble(st)
        table, metrics = st.result
        g = self.cfg.rollout.group_size
        groups = np.array_split(np.arange(table.num_rows // g), world)[rank]
        rows = [int(x) for grp in groups for x in range(grp * g, grp * g + g)]
        st.fetched.add(rank)
        if len(st.fetched) >= world:
            self.steps.pop(step, None)
        return table.take(pa.array(rows, type=pa.int64())), metrics

    def _assemble(self, st: _Step):
        table = pa.concat_tables(st.tables).sort_by([("group_id", "ascending"), ("sample_index", "ascending")])
        g = self.cfg.rollout.group_size
        group_ids = table["group_id"].to_pylist()[::g]
        if len(set(group_ids)) != st.groups or len(group_ids) != st.groups:
            raise PoolError(f"step {st.step}: assembled {len(group_ids)} groups ({len(set(group_ids))} distinct), "
                            f"expected {st.groups}")
        metrics = _batch_metrics(table, self.cfg.stage_names, g, st.prepare_s, st.t_generated - (st.t_first or 0.0),
                                 max(0.0, st.t_scored - st.t_generated))
        hist = staleness_histogram(st.step, table["policy_version"].to_pylist())
        metrics.update({f"staleness/{k}": v for k, v in hist.items()})
        metrics.update(staleness_max=max(hist), staleness_mean=sum(k * v for k, v in hist.items()) / table.num_rows,
                       dropped_stale_samples=st.dropped_stale, time_generate_sum=st.generate_s,
                       time_score_sum=st.score_s, ts_produce_start=st.ts_start, example_ids=table["example_id"].to_pylist()[::g],
                       samples=sample_records(table, self.cfg.stage_names, self.tokenizer, st.step,
                                              self.cfg.logging.log_completions))
        metrics.update(self._pool_metrics())
        return table, metrics

    def _pool_metrics(self) -> dict:
        pool = self.pool
        now = {k: float(pool.stats[k]) for k in ("wait_weights_s", "load_s", "worker_restarts", "scorer_restarts",
                                                 "redispatched_groups", "scale_up", "scale_down")}
        delta = {k: now[k] - self.stats_seen.get(k, 0.0) for k in ("wait_weights_s", "load_s")}
        self.stats_seen = now
        return {"time_fleet_wait_weights": delta["wait_weights_s"], "time_weight_load": delta["load_s"],
                "pool_workers": len(pool.live()), "pool_started": sum(s.started for s in pool.live()),
                "worker_restarts": int(now["worker_restarts"]), "scorer_restarts": int(now["scorer_restarts"]),
                "redispatched_groups": int(now["redispatched_groups"]), "scale_ups": int(now["scale_up"]),
                "scale_downs": int(now["scale_down"]), "learner_starts": self.resets,
                "fleet_events": pool.drain_events()}

    # ------------------------------------------------------------------ weights

    async def sync_weights(self, packed_ref: list, version: int, wait: bool = True) -> dict:
        """Publish; with ``wait``, return once every started rollout worker holds ``version``."""
        pool = await self._started()
        start = time.perf_counter()
        await pool.publish(packed_ref, version)
        versions = await pool.wait_version(version) if wait else []
        return {"seconds": time.perf_counter() - start, "versions": versions}

    async def versions(self) -> List[int]:
        pool = await self._started()
        return [s.version for s in pool.live() if s.started]

    async def worker_state_dicts(self) -> list:
        pool = await self._started()
        return [await s.handle.state_dict.remote() for s in pool.live() if s.started]

    async def pool_state(self) -> dict:
        pool = await self._started()
        return {"workers": {s.id: {"version": s.version, "started": s.started, "busy": s.busy}
                            for s in pool.live()},
                "pending_groups": sum(i.groups for i in pool.pending), "stats": dict(pool.stats)}

    # ------------------------------------------------------------------ evaluation

    async def evaluate(self, max_examples: int = 0) -> dict:
        pool = await self._started()
        rows = list(range(self.evals.num_rows))
        if max_examples:
            rows = _per_dataset_head(self.evals, max_examples)
        if not rows:
            return {}
        prompts = self._prompts(self.evals, rows, "eval")
        self._requests += 1
        req, parts = self._requests, self._chunks(prompts)
        got: list = []
        self.evals_pending[req] = got
        await pool.submit([WorkItem(("eval", req, i), -1, p, 1, True, self.epoch) for i, p in enumerate(parts)],
                          front=True)
        try:  # each worker notifies the pool's condition after every chunk it returns
            async with pool.cond:
                await pool.cond.wait_for(lambda: len(got) >= len(parts) or pool.fatal is not None)
        finally:
            self.evals_pending.pop(req, None)
        if pool.fatal is not None:
            raise pool.fatal
        out = pa.concat_tables(got).sort_by([("group_id", "ascending")]).select(
            ["dataset", "label", "label_set", "completion", "finish_reason", "prompt_truncated"])
        return evaluate_rows(out.to_pylist())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def _per_dataset_head(table: pa.Table, n: int) -> List[int]:
    seen: Dict[str, int] = {}
    rows = []
    for i, d in enumerate(table["dataset"].to_pylist()):
        if seen.get(d, 0) < n:
            seen[d] = seen.get(d, 0) + 1
            rows.append(i)
    return rows


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _batch_metrics(table: pa.Table, stage_names, group_size: int, prep_s: float, gen_s: float, score_s: float) -> dict:
    lengths = [len(r) for r in table["response_ids"].to_pylist()]
    stage_h = table["stage_entropy"].to_pylist()
    m = {
        "reward": _mean(table["reward"].to_pylist()),
        "reward_format": _mean(table["reward_format"].to_pylist()),
        "reward_accuracy": _mean(table["reward_accuracy"].to_pylist()),
        "reward_uncertainty": _mean(table["reward_uncertainty"].to_pylist()),
        "accuracy": _mean([float(c) for c in table["correct"].to_pylist()]),
        "format_ok": _mean([float(r > 0) for r in table["reward_format"].to_pylist()]),
        "response_len": _mean(lengths),
        "truncated_responses": _mean([float(f == "length") for f in table["finish_reason"].to_pylist()]),
        "prompts_truncated": int(sum(table["prompt_truncated"].to_pylist()[::group_size])),
        "generated_tokens": int(sum(lengths)),
        "policy_versions": sorted(set(table["policy_version"].to_pylist())),
        "time_prepare": prep_s, "time_generate": gen_s, "time_score": score_s,
    }
    for k, name in enumerate(stage_names):
        m[f"rollout_stage_entropy/{name}"] = _mean([h[k] for h in stage_h])
    return m


FleetActor = ray.remote(max_restarts=0)(ExperienceFleet)
