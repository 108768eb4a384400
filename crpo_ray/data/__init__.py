"""Data loaders: IMHI and the Mental-R1 layout into one Arrow table (``schemas.EXAMPLES``).

Usage::

    table, report = load_sources(cfg.data.train, strict=cfg.data.strict)
    for line in report.lines(): print(line)

Labels are normalized against each dataset's label set; rows whose label cannot be
mapped are counted per file in the report, never guessed. Malformed rows raise
:class:`DataError` (one line with file and row) in strict mode, or are skipped and
counted in lenient mode.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pyarrow as pa

from crpo_ray import schemas
from crpo_ray.data import imhi, mental_r1
from crpo_ray.data.common import DataError, FileReport, LoadReport, fix_mojibake

__all__ = ["DataError", "FileReport", "LoadReport", "load_sources", "load_source", "class_counts",
           "fix_mojibake", "LOADERS", "default_data_root"]

LOADERS = {"imhi": imhi.load, "mental_r1": mental_r1.load}


def default_data_root() -> Path:
    """The ``data/`` folder shipped in the repository (the default job's data)."""
    return Path(__file__).resolve().parents[2] / "data"


class _Columns:
    """Column-wise accumulator for the examples table."""

    def __init__(self):
        self.cols = {f.name: [] for f in schemas.EXAMPLES}

    def add(self, dataset, split, example_id, instruction, text, label, label_set):
        for key, value in zip(self.cols, (dataset, split, example_id, instruction, text, label, list(label_set))):
            self.cols[key].append(value)

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=schemas.EXAMPLES)


def _resolve(root: str) -> Path:
    path = Path(root).expanduser()
    if path.is_absolute() or path.exists():
        return path
    shipped = default_data_root().parent / path
    return shipped if shipped.exists() else path


def load_source(fmt: str, root: str, split: str, datasets: Sequence[str] = (), *, strict: bool = True,
                fix_text: bool = True, limit: int = 0, _sink=None, _report=None):
    """Load one source (``fmt`` is ``imhi`` or ``mental_r1``)."""
    if fmt not in LOADERS:
        raise DataError(f"unknown data format '{fmt}' (known: {', '.join(LOADERS)})")
    sink = _sink if _sink is not None else _Columns()
    report = _report if _report is not None else LoadReport()
    LOADERS[fmt](_resolve(root), split, list(datasets), strict=strict, fix_text=fix_text, limit=limit,
                 sink=sink, reports=report.files)
    if _sink is None:
        return _finish(sink, report)
    return None


def load_sources(sources, *, strict: bool = True, fix_text: bool = True) -> Tuple[pa.Table, LoadReport]:
    """Load every ``DataSourceConfig``-like source into one examples table and a report."""
    sink, report = _Columns(), LoadReport()
    for src in sources:
        load_source(src.format, src.root, src.split, src.datasets, strict=strict, fix_text=fix_text,
                    limit=src.max_examples_per_dataset, _sink=sink, _report=report)
    return _finish(sink, report)


def _finish(sink: _Columns, report: LoadReport) -> Tuple[pa.Table, LoadReport]:
    table = sink.table()
    ids = table.column("example_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"the same example was loaded twice ({dup}): a source is listed more than once")
    return schemas.validate(table, schemas.EXAMPLES, "examples"), report


def class_counts(table: pa.Table) -> Dict[str, Dict[str, int]]:
    """``{dataset: {label: count}}`` of an examples table (the training mix's counts)."""
    counts: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d, lab in zip(table.column("dataset").to_pylist(), table.column("label").to_pylist()):
        counts[d][lab] += 1
    return {d: dict(c) for d, c in counts.items()}
