"""The Mental-R1 paper's datasets in their authors' layout:
``<root>/<NAME>/{train,val|dev,test}_clean.csv`` with columns ``text,label,mental_prompt``.

``root`` is ``datasets/`` in the authors' repository or any copy of it. Files named
``*_clean.sample.csv`` (the first rows of a source file) are read when the full file
is absent, and the report marks them as samples.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from crpo_ray.data.common import DataError, FileReport, read_csv_rows, row_problem

LABEL_SETS: Dict[str, List[str]] = {
    "DATD": ["Yes", "No"],
    "DepSeverity": ["Minimum", "Mild", "Moderate", "Severe"],
    "Dreaddit": ["Yes", "No"],
    "FIG": ["Yes", "No"],
    "LID": ["[1-2]", "[2-3]", "[3-4]", "[4-5]"],
    "LT-EDI": ["Not depressed", "Moderately depressed", "Severely depressed"],
    "RSD": ["Indicator", "Ideation", "Behavior", "Attempt"],
    "SDCNL": ["Yes", "No"],
}

SPLIT_STEMS = {"train": ["train"], "val": ["val", "dev"], "test": ["test"]}

_OPTION = re.compile(r'"([^"\n]+)"')


def split_file(root: Path, name: str, split: str) -> Optional[Path]:
    """The file holding ``split`` of dataset ``name``: a full file first, then a sample."""
    for suffix in ("_clean.csv", "_clean.sample.csv"):
        for stem in SPLIT_STEMS[split]:
            path = root / name / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def available(root: Path, split: str) -> List[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and split_file(root, p.name, split))


def label_set_for(name: str, instruction: str) -> Optional[List[str]]:
    """Known datasets use their fixed label set; others the quoted options of their instruction."""
    if name in LABEL_SETS:
        return LABEL_SETS[name]
    options = _OPTION.findall(instruction)
    return options or None


def load(root: Path, split: str, datasets: Sequence[str], *, strict: bool, fix_text: bool, limit: int, sink, reports: list) -> None:
    """Append examples of ``split`` for ``datasets`` (all present if empty) to ``sink``.

    The text is kept byte for byte (``fix_text`` is not applied to this format).
    """
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    names = list(datasets) or available(root, split)
    if not names:
        raise DataError(f"{root}: no <NAME>/{split}_clean.csv files found")
    for name in names:
        if not (root / name).is_dir():
            raise DataError(f"{root / name}: dataset directory not found")
        path = split_file(root, name, split)
        if path is None:
            tried = ", ".join(f"{s}_clean.csv" for s in SPLIT_STEMS[split])
            raise DataError(f"{root / name}: no {split} file ({tried})")
        report = FileReport(path=str(path), dataset=name, split=split, is_sample=path.name.endswith(".sample.csv"))
        reports.append(report)
        _load_file(path, name, split, strict=strict, limit=limit, sink=sink, report=report)


def _load_file(path: Path, name: str, split: str, *, strict, limit, sink, report: FileReport) -> None:
    by_fold = None
    for row_no, row in read_csv_rows(path, ["text", "label", "mental_prompt"], strict, report):
        instruction, text = row["mental_prompt"], row["text"]
        if not text.strip():
            row_problem(path, row_no, "empty text", strict, report)
            continue
        if not instruction.strip():
            row_problem(path, row_no, "empty mental_prompt", strict, report)
            continue
        labels = label_set_for(name, instruction)
        if labels is None:
            raise DataError(f"{path}: row {row_no}: cannot tell the label set of unknown dataset '{name}' "
                            "(its mental_prompt names no quoted options)")
        if by_fold is None or by_fold[0] is not labels:
            by_fold = (labels, {l.casefold(): l for l in labels})
        label = by_fold[1].get(row["label"].strip().casefold())
        if label is None:
            report.unmapped_labels[row["label"].strip()[:40]] += 1
            continue
        sink.add(name, split, f"mental_r1:{name}:{split}:{row_no}", instruction, text, label, labels)
        report.loaded += 1
        if limit and report.loaded >= limit:
            break
