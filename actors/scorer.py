"""Scorer: rollouts table -> scored table (stage ids, rewards, group advantages).

A plain class around :func:`crpo_ray.scoring.score_rollouts`; ``ScorerActor`` is the
Ray actor. Scorers are CPU-only and hold just a tokenizer.
"""

from __future__ import annotations

import pyarrow as pa
import ray

from crpo_ray.scoring import ScoringParams, score_rollouts


class Scorer:
    def __init__(self, model_dir: str, params: ScoringParams, weights: dict, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.params = params
        self.weights = weights

    def score(self, rollouts: pa.Table) -> pa.Table:
        return score_rollouts(rollouts, self.tokenizer, self.params, self.weights)


ScorerActor = ray.remote(Scorer)
