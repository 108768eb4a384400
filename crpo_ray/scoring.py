"""Rollouts table -> scored table: stage ids, rewards, group advantages. Pure (no Ray).

The G samples of a prompt are contiguous rows with the same ``group_id`` and are
always scored together, since the advantage is normalized within the group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import pyarrow as pa
import torch

from crpo_ray import schemas
from crpo_ray.algo import group_advantages
from crpo_ray.rewards import answer_matches, extract_answer, score_completion
from crpo_ray.stages import assign_stage_ids


@dataclass(frozen=True)
class ScoringParams:
    stage_names: Sequence[str]
    group_size: int
    format_value: float = 0.5
    accuracy_scale: float = 1.0
    uncertainty_weight: float = 0.0
    adv_eps: float = 1e-4
    scale_adv_by_std: bool = True
    prefilled: bool = True


def _stage_entropy(entropies: Sequence[float], stage_ids: Sequence[int], k: int) -> List[float]:
    sums, counts = [0.0] * k, [0] * k
    for h, s in zip(entropies, stage_ids):
        if s >= 0:
            sums[s] += h
            counts[s] += 1
    return [sums[i] / counts[i] if counts[i] else math.nan for i in range(k)]


def score_rollouts(table: pa.Table, tokenizer, params: ScoringParams,
                   weights: Dict[str, Dict[str, float]]) -> pa.Table:
    """Score a rollouts table (``schemas.ROLLOUTS``) into ``schemas.SCORED``.

    ``weights[dataset][label]`` is the accuracy weight w (1.0 where absent).
    """
    schemas.validate(table, schemas.ROLLOUTS, "scorer input")
    if table.num_rows % params.group_size:
        raise ValueError(f"{table.num_rows} rollouts is not a whole number of groups of {params.group_size}")
    groups = table.column("group_id").to_pylist()
    for start in range(0, len(groups), params.group_size):
        if len(set(groups[start:start + params.group_size])) != 1:
            raise ValueError("the samples of a group must be contiguous rows")
    k = len(params.stage_names)
    cols = {name: [] for name in ("stage_ids", "stage_entropy", "reward_format", "reward_accuracy",
                                  "reward_uncertainty", "reward", "correct")}
    rows = zip(table.column("response_ids").to_pylist(), table.column("entropies").to_pylist(),
               table.column("completion").to_pylist(), table.column("label").to_pylist(),
               table.column("dataset").to_pylist())
    for ids, ents, completion, label, dataset in rows:
        sids = assign_stage_ids(ids, tokenizer, params.stage_names, prefilled=params.prefilled)
        stage_h = _stage_entropy(ents, sids, k)
        w = weights.get(dataset, {}).get(label, 1.0) * params.accuracy_scale
        parts = score_completion(
            completion, label, params.stage_names, accuracy_weight=w, format_value=params.format_value,
            stage_entropies=[None if math.isnan(h) else h for h in stage_h],
            uncertainty_weight=params.uncertainty_weight, prefilled=params.prefilled)
        for key, value in (("stage_ids", sids), ("stage_entropy", stage_h), ("reward_format", parts.format),
                           ("reward_accuracy", parts.accuracy), ("reward_uncertainty", parts.uncertainty),
                           ("reward", parts.total), ("correct", answer_matches(extract_answer(completion), label))):
            cols[key].append(value)
    rewards = torch.tensor(cols["reward"], dtype=torch.float64)
    adv = group_advantages(rewards, params.group_size, eps=params.adv_eps, scale_by_std=params.scale_adv_by_std)
    out = table
    for f in schemas.SCORED:
        if f.name in cols:
            out = out.append_column(f, pa.array(cols[f.name], type=f.type))
    out = out.append_column(schemas.SCORED.field("advantage"), pa.array(adv.tolist(), type=pa.float32()))
    return schemas.validate(out.replace_schema_metadata(schemas.SCORED.metadata), schemas.SCORED, "scorer output")
