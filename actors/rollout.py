"""RolloutWorker: samples G completions per prompt with an engine, as an Arrow table.

A plain class (unit tests build it directly); ``RolloutActor`` at the bottom is the
Ray actor. Every sample is labeled with the weights version the worker holds, and
the version only changes inside :meth:`load_weights`, which runs between generate
calls (the actor runs one method at a time).
"""

from __future__ import annotations

import time
import zlib

import pyarrow as pa
import ray
import torch

from crpo_ray import schemas
from crpo_ray.engines import make_engine
from crpo_ray.weights import PackedWeights


class RolloutWorker:
    def __init__(self, worker_id: str, model_dir: str, model_cfg, rollout_cfg, threads: int = 0, seed: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.worker_id = worker_id
        self.cfg = rollout_cfg
        self.seed = seed
        self.engine = make_engine(rollout_cfg.engine, model_dir, dtype=model_cfg.dtype,
                                  trust_remote_code=model_cfg.trust_remote_code,
                                  attn_implementation=model_cfg.attn_implementation,
                                  vllm_gpu_memory_utilization=rollout_cfg.vllm_gpu_memory_utilization,
                                  vllm_logprobs_topk=rollout_cfg.vllm_logprobs_topk)
        self.version = 0
        self.calls = 0

    def get_version(self) -> int:
        return self.version

    def load_weights(self, packed: PackedWeights, version: int) -> dict:
        start = time.perf_counter()
        nbytes = self.engine.load_weights(packed)
        self.version = version
        return {"worker": self.worker_id, "version": version, "bytes": nbytes, "seconds": time.perf_counter() - start}

    def generate(self, prompts: pa.Table, n: int, greedy: bool = False) -> pa.Table:
        """``schemas.PROMPTS`` in, ``schemas.ROLLOUTS`` out (n rows per prompt, grouped)."""
        schemas.validate(prompts, schemas.PROMPTS, f"{self.worker_id} input")
        self.calls += 1
        version = self.version
        res = self.engine.generate(prompts.column("prompt_ids").to_pylist(), n, temperature=self.cfg.temperature,
                                   top_p=self.cfg.top_p, max_new_tokens=self.cfg.max_new_tokens, greedy=greedy,
                                   seed=zlib.crc32(f"{self.seed}:{self.worker_id}:{version}:{self.calls}".encode()))
        idx = pa.array([i for i in range(prompts.num_rows) for _ in range(n)], type=pa.int64())
        cols = {f.name: prompts.column(f.name).take(idx) for f in schemas.PROMPTS}
        cols.update(
            sample_index=pa.array([j for _ in range(prompts.num_rows) for j in range(n)], type=pa.int32()),
            response_ids=pa.array(res.response_ids, type=pa.list_(pa.int32())),
            behavior_logprobs=pa.array(res.logprobs, type=pa.list_(pa.float32())),
            entropies=pa.array(res.entropies, type=pa.list_(pa.float32())),
            finish_reason=pa.array(res.finish_reasons, type=pa.string()),
            policy_version=pa.array([version] * len(res.completions), type=pa.int64()),
            completion=pa.array(res.completions, type=pa.string()),
        )
        return schemas.validate(pa.table(cols, schema=schemas.ROLLOUTS), schemas.ROLLOUTS, f"{self.worker_id} output")

    def state_dict(self) -> dict:
        return self.engine.state_dict()


RolloutActor = ray.remote(RolloutWorker)
