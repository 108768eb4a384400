"""ExperienceFleet: owns the rollout workers and scorers, hands the learner scored batches.

One actor (``FleetActor``), called by every learner rank:

* ``shard(step, rank, world)``: the first call for a step produces the whole scored
  batch (prompts of the step -> rollout workers -> scorers); every call returns that
  rank's contiguous share of whole groups, plus the step's metrics.
* ``sync_weights([ref], version)``: every rollout worker loads the packed weights
  behind ``ref`` (read zero-copy from the object store) and reports its version.
* ``evaluate(max_examples)``: greedy answers on the held-out split, weighted F1.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List

import numpy as np
import pyarrow as pa
import ray

from crpo_ray import schemas
from crpo_ray.algo import stage_betas_from_config
from crpo_ray.data import class_counts
from crpo_ray.metrics import evaluate_predictions
from crpo_ray.prompts import render_prompt, resolve_system_prompt
from crpo_ray.rewards import balanced_weights
from crpo_ray.sampler import step_indices
from crpo_ray.scoring import ScoringParams
from crpo_ray.actors.rollout import RolloutActor
from crpo_ray.actors.scorer import ScorerActor


class ExperienceFleet:
    def __init__(self, cfg, model_dir: str, train: pa.Table, evals: pa.Table, threads: int = 1):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.train, self.evals = train, evals
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code)
        self.system_prompt = resolve_system_prompt(cfg.prompt.system_prompt,
                                                   [(s.name, s.description) for s in cfg.prompt.stages])
        self.weights = balanced_weights(class_counts(train)) if cfg.reward.balanced else {}
        params = ScoringParams(
            stage_names=cfg.stage_names, group_size=cfg.rollout.group_size, format_value=cfg.reward.format_value,
            accuracy_scale=cfg.reward.accuracy_scale, uncertainty_weight=cfg.reward.uncertainty_weight,
            adv_eps=cfg.algorithm.adv_eps, scale_adv_by_std=cfg.algorithm.scale_adv_by_std, prefilled=cfg.prompt.prefill)
        gpu = 1 if cfg.rollout.engine == "vllm" else 0
        self.workers = [
            RolloutActor.options(num_cpus=1, num_gpus=gpu, resources=_custom("rollout")).remote(
                f"rollout-{i}", model_dir, cfg.model, cfg.rollout, threads, cfg.run.seed + i)
            for i in range(cfg.rollout.num_workers)]
        self.scorers = [ScorerActor.options(num_cpus=1).remote(model_dir, params, self.weights,
                                                               cfg.model.trust_remote_code)
                        for _ in range(cfg.rollout.num_scorers)]
        self._rendered: Dict[tuple, tuple] = {}
        self._cache = None
        self.betas = stage_betas_from_config(cfg.algorithm, len(cfg.stage_names))

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

    def _split(self, prompts: pa.Table) -> List[pa.Table]:
        parts = np.array_split(np.arange(prompts.num_rows), len(self.workers))
        return [prompts.take(pa.array(p, type=pa.int64())) for p in parts if len(p)]

    # ------------------------------------------------------------------ training batches

    def _produce(self, step: int):
        cfg = self.cfg
        t0, ts0 = time.perf_counter(), time.time()
        rows = step_indices(step, cfg.rollout.prompts_per_step, self.train.num_rows, cfg.data.shuffle_seed)
        prompts = self._prompts(self.train, rows, "train")
        t1 = time.perf_counter()
        gen_refs = [w.generate.remote(part, cfg.rollout.group_size) for w, part in zip(self.workers, self._split(prompts))]
        ray.wait(gen_refs, num_returns=len(gen_refs), fetch_local=False)
        t2 = time.perf_counter()
        scored_refs = [self.scorers[i % len(self.scorers)].score.remote(ref) for i, ref in enumerate(gen_refs)]
        table = pa.concat_tables(ray.get(scored_refs))
        t3 = time.perf_counter()
        metrics = _batch_metrics(table, cfg.stage_names, prompts, t1 - t0, t2 - t1, t3 - t2)
        metrics["ts_produce_start"] = ts0  # wall clock, for timelines
        return table, metrics

    def shard(self, step: int, rank: int, world: int):
        """This rank's contiguous share (whole groups) of the step's scored batch, and the step's metrics."""
        if self._cache is None or self._cache[0] != step:
            self._cache = (step, *self._produce(step))
        _, table, metrics = self._cache
        g = self.cfg.rollout.group_size
        groups = np.array_split(np.arange(table.num_rows // g), world)[rank]
        rows = [int(x) for grp in groups for x in range(grp * g, grp * g + g)]
        return table.take(pa.array(rows, type=pa.int64())), metrics

    # ------------------------------------------------------------------ weights

    def sync_weights(self, packed_ref: list, version: int) -> dict:
        start = time.perf_counter()
        reports = ray.get([w.load_weights.remote(packed_ref[0], version) for w in self.workers])
        return {"seconds": time.perf_counter() - start, "versions": [r["version"] for r in reports],
                "bytes": reports[0]["bytes"] if reports else 0}

    def versions(self) -> List[int]:
        return ray.get([w.get_version.remote() for w in self.workers])

    def worker_state_dicts(self) -> list:
        return ray.get([w.state_dict.remote() for w in self.workers])

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, max_examples: int = 0) -> dict:
        rows = list(range(self.evals.num_rows))
        if max_examples:
            rows = _per_dataset_head(self.evals, max_examples)
        if not rows:
            return {}
        prompts = self._prompts(self.evals, rows, "eval")
        tables = ray.get([w.generate.remote(p, 1, True) for w, p in zip(self.workers, self._split(prompts))])
        out = pa.concat_tables(tables)
        res = evaluate_predictions(out["dataset"].to_pylist(), out["label"].to_pylist(),
                                   out["completion"].to_pylist(), out["label_set"].to_pylist())
        return res.as_dict()


def _per_dataset_head(table: pa.Table, n: int) -> List[int]:
    seen: Dict[str, int] = {}
    rows = []
    for i, d in enumerate(table["dataset"].to_pylist()):
        if seen.get(d, 0) < n:
            seen[d] = seen.get(d, 0) + 1
            rows.append(i)
    return rows


def _custom(name: str) -> dict:
    """A custom resource request only where the cluster defines it (node types by role)."""
    try:
        return {name: 0.001} if ray.cluster_resources().get(name) else {}
    except Exception:  # noqa: BLE001 - no cluster info: no custom resource
        return {}


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _batch_metrics(table: pa.Table, stage_names, prompts: pa.Table, prep_s: float, gen_s: float, score_s: float) -> dict:
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
        "prompts_truncated": int(sum(prompts["prompt_truncated"].to_pylist())),
        "generated_tokens": int(sum(lengths)),
        "policy_versions": sorted(set(table["policy_version"].to_pylist())),
        "example_ids": prompts["example_id"].to_pylist(),
        "time_prepare": prep_s, "time_generate": gen_s, "time_score": score_s,
    }
    for k, name in enumerate(stage_names):
        m[f"rollout_stage_entropy/{name}"] = _mean([h[k] for h in stage_h])
    return m


FleetActor = ray.remote(ExperienceFleet)
