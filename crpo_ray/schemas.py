"""Arrow schemas, one per stage boundary, defined once and validated on both sides.

This module holds the dataset boundary (loaders -> prompt builder). The rollout and
scored-batch schemas join it when the distributed pipeline lands.
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
