"""Rollouts -> scored table: rewards, stage ids and advantages per group."""

import math

import pyarrow as pa
import pytest

from crpo_ray import schemas
from crpo_ray.scoring import ScoringParams, score_rollouts

STAGES = ["stimulus", "primary_appraisal", "secondary_appraisal", "reaction", "mental_state"]
GOOD = "".join([" event</stimulus>"] + [f"<{n}> x</{n}>" for n in STAGES[1:]]) + "</think><answer>Yes</answer>"


def rollouts(tok, completions, label="Yes", groups=None):
    n = len(completions)
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    return pa.table({
        "example_id": [f"e{g}" for g in (groups or [0] * n)], "dataset": ["D"] * n, "label": [label] * n,
        "label_set": [["Yes", "No"]] * n, "group_id": groups or [0] * n, "prompt_ids": [[1, 2]] * n,
        "prompt_truncated": [False] * n, "sample_index": list(range(n)), "response_ids": ids,
        "behavior_logprobs": [[-1.0] * len(i) for i in ids], "entropies": [[float(k) for k in range(len(i))] for i in ids],
        "finish_reason": ["stop"] * n, "policy_version": [3] * n, "completion": completions,
    }, schema=schemas.ROLLOUTS)


def test_scores_a_group(tiny_tokenizer):
    comps = [GOOD, GOOD.replace("Yes", "No"), "garbage", GOOD.replace("<reaction> x</reaction>", "")]
    out = score_rollouts(rollouts(tiny_tokenizer, comps), tiny_tokenizer, ScoringParams(STAGES, 4),
                         {"D": {"Yes": 2.0}})
    assert out.schema.equals(schemas.SCORED, check_metadata=False)
    assert out["reward_format"].to_pylist() == [0.5, 0.5, -0.5, -0.5]
    assert out["reward_accuracy"].to_pylist() == [2.0, -2.0, -2.0, 2.0]
    rewards = [2.5, -1.5, -2.5, 1.5]
    assert out["reward"].to_pylist() == rewards
    mean = sum(rewards) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 3)
    assert out["advantage"].to_pylist() == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards], rel=1e-5)
    sids = out["stage_ids"].to_pylist()[0]
    assert len(sids) == len(out["response_ids"].to_pylist()[0]) and set(sids) == {-1, 0, 1, 2, 3, 4}
    assert math.isnan(out["stage_entropy"].to_pylist()[3][3])  # the reaction stage is absent


def test_groups_must_be_whole_and_contiguous(tiny_tokenizer):
    with pytest.raises(ValueError, match="whole number of groups"):
        score_rollouts(rollouts(tiny_tokenizer, [GOOD] * 3), tiny_tokenizer, ScoringParams(STAGES, 2), {})
    with pytest.raises(ValueError, match="contiguous"):
        score_rollouts(rollouts(tiny_tokenizer, [GOOD] * 4, groups=[0, 1, 0, 1]), tiny_tokenizer,
                       ScoringParams(STAGES, 2), {})
