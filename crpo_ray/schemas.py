"""Arrow schemas, one per stage boundary, defined once and validated on both sides.

Boundaries: loaders -> fleet (``EXAMPLES``), fleet -> rollout workers (``PROMPTS``),
rollout workers -> scorers (``ROLLOUTS``), scorers -> learner (``SCORED``). One row of
``ROLLOUTS``/``SCORED`` is one sampled completion; the G samples of a prompt share
``group_id`` and are contiguous.
"""

from __future__ import annotations

import pyarrow as pa

#: One labeled post. ``label`` is always a member of ``label_set`` (normalized).
EXAMPLES = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),  # e.g. "Dreaddit", "SAD"
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("example_id", pa.string(), nullable=False),  # "<format>:<dataset>:<split>:<row>", unique
        pa.field("instruction", pa.string(), nullable=False),  # task text naming the allowed answers
        pa.field("text", pa.string(), nullable=False),  # the post
        pa.field("label", pa.string(), nullable=False),  # gold label, canonical spelling
        pa.field("label_set", pa.list_(pa.string()), nullable=False),  # the dataset's labels
    ],
    metadata={"crpo_ray.schema": "examples/v1"},
)


_PROMPT_FIELDS = [
    pa.field("example_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("label_set", pa.list_(pa.string()), nullable=False),
    pa.field("group_id", pa.int64(), nullable=False),  # unique within a step
    pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),  # chat template + prefill, [P]
    pa.field("prompt_truncated", pa.bool_(), nullable=False),  # the post was cut to fit the budget
]

#: One prompt to sample G completions for.
PROMPTS = pa.schema(_PROMPT_FIELDS, metadata={"crpo_ray.schema": "prompts/v1"})

_ROLLOUT_FIELDS = _PROMPT_FIELDS + [
    pa.field("sample_index", pa.int32(), nullable=False),  # 0..G-1 within the group
    pa.field("response_ids", pa.list_(pa.int32()), nullable=False),  # generated ids [T], eos included
    pa.field("behavior_logprobs", pa.list_(pa.float32()), nullable=False),  # [T] engine log-probs
    pa.field("entropies", pa.list_(pa.float32()), nullable=False),  # [T] engine entropy (exact in hf)
    pa.field("finish_reason", pa.string(), nullable=False),  # stop | length
    pa.field("policy_version", pa.int64(), nullable=False),  # weights version that generated it
    pa.field("completion", pa.string(), nullable=False),  # decoded response, special tokens skipped
]

#: One sampled completion as the engine produced it.
ROLLOUTS = pa.schema(_ROLLOUT_FIELDS, metadata={"crpo_ray.schema": "rollouts/v1"})

#: A rollout with its stage ids, reward components and group advantage.
SCORED = pa.schema(
    _ROLLOUT_FIELDS + [
        pa.field("stage_ids", pa.list_(pa.int32()), nullable=False),  # [T], -1 outside stages
        pa.field("stage_entropy", pa.list_(pa.float32()), nullable=False),  # [K] mean per stage, NaN if absent
        pa.field("reward_format", pa.float32(), nullable=False),
        pa.field("reward_accuracy", pa.float32(), nullable=False),
        pa.field("reward_uncertainty", pa.float32(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),  # sum of the components
        pa.field("correct", pa.bool_(), nullable=False),  # the answer matched the gold label
        pa.field("advantage", pa.float32(), nullable=False),  # group-normalized reward
    ],
    metadata={"crpo_ray.schema": "scored/v1"},
)


class SchemaError(ValueError):
    """A table that does not match the schema of its stage boundary."""


def validate(table: pa.Table, schema: pa.Schema, where: str = "table") -> pa.Table:
    """Check ``table`` against ``schema`` (names, types, no nulls); return it unchanged."""
    got = [(f.name, f.type) for f in table.schema]
    want = [(f.name, f.type) for f in schema]
    if got != want:
        raise SchemaError(f"{where}: schema mismatch: expected {want}, got {got}")
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise SchemaError(f"{where}: column '{f.name}' has {table.column(f.name).null_count} nulls")
    return table


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
