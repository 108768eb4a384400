"""The IMHI benchmark files (MentalLLaMA): ``<root>/test/<NAME>.csv`` and
``<root>/train/<NAME>_{train,val}.csv``.

Test files have ``query`` ("Post: ... Question: ...") and ``gpt-3.5-turbo`` (gold
label, then ". Reasoning: ..."); train/val files have ``post``, ``question`` and
``response``. The gold label is the label the response starts with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence

from crpo_ray.data.common import DataError, FileReport, fix_mojibake, read_csv_rows, row_problem
from crpo_ray.rewards import match_label

YES_NO = ["yes", "no"]

LABEL_SETS: Dict[str, List[str]] = {
    "CAMS": ["none", "bias or abuse", "jobs and career", "medication", "relationship", "alienation"],
    "DR": YES_NO,
    "Irf": YES_NO,
    "MultiWD": YES_NO,
    "SAD": ["school", "financial problem", "family issues", "social relationships", "work",
            "health issues", "emotional turmoil", "everyday decision making", "other causes"],
    "dreaddit": YES_NO,
    "loneliness": YES_NO,
    "t-sid": ["no mental disorders", "depression", "suicide or self-harm tendency", "ptsd"],
}

SPLIT_FILES = {"test": "test/{name}.csv", "train": "train/{name}_train.csv", "val": "train/{name}_val.csv"}

_QUOTED_QUESTION = re.compile(r'"([^"]+\?)"')
_SHOWS_THE = re.compile(r"This post shows the (.+?) of\s*$", re.IGNORECASE)


def make_instruction(question: str, labels: Sequence[str]) -> str:
    """A task sentence from IMHI's question text, naming the allowed answers."""
    q = " ".join(question.replace("Question:", " ").split())
    m = _QUOTED_QUESTION.search(q)
    if m:
        task = m.group(1)
    elif _SHOWS_THE.search(q):
        task = f"Which {_SHOWS_THE.search(q).group(1)} does this post show?"
    else:
        task = q
    options = ", ".join(f'"{label}"' for label in labels)
    return f"{task}\n- Answer with one of: {options}.\nPost:"


def _split_query(query: str):
    """("Post: <post>  Question: <question>") -> (post, question); the last "Question:" wins."""
    pos = query.rfind("Question:")
    if pos < 0:
        return query, ""
    return query[:pos], query[pos:]


def _strip_post_prefix(post: str) -> str:
    post = post.strip()
    return post[len("Post:"):].strip() if post.startswith("Post:") else post


def available(root: Path, split: str) -> List[str]:
    return [n for n in LABEL_SETS if (root / SPLIT_FILES[split].format(name=n)).is_file()]


def load(root: Path, split: str, datasets: Sequence[str], *, strict: bool, fix_text: bool, limit: int, sink, reports: list) -> None:
    """Append examples of ``split`` for ``datasets`` (all present if empty) to ``sink``."""
    names = list(datasets) or available(root, split)
    if not names:
        raise DataError(f"{root}: no IMHI {split} files found (expected e.g. {SPLIT_FILES[split].format(name='DR')})")
    for name in names:
        if name not in LABEL_SETS:
            raise DataError(f"{root}: unknown IMHI dataset '{name}' (known: {', '.join(LABEL_SETS)})")
        path = root / SPLIT_FILES[split].format(name=name)
        if not path.is_file():
            raise DataError(f"{path}: file not found (IMHI {name} has no {split} split here)")
        report = FileReport(path=str(path), dataset=name, split=split)
        reports.append(report)
        _load_file(path, name, split, strict=strict, fix_text=fix_text, limit=limit, sink=sink, report=report)


def _load_file(path: Path, name: str, split: str, *, strict, fix_text, limit, sink, report: FileReport) -> None:
    labels = LABEL_SETS[name]
    is_test = split == "test"
    required = ["query", "gpt-3.5-turbo"] if is_test else ["post", "question", "response"]
    for row_no, row in read_csv_rows(path, required, strict, report):
        if is_test:
            post, question = _split_query(row["query"])
            response = row["gpt-3.5-turbo"]
        else:
            post, question, response = row["post"], row["question"], row["response"]
        text = _strip_post_prefix(post)
        if not text:
            row_problem(path, row_no, "empty text", strict, report)
            continue
        label = match_label(response, labels)
        if label is None:
            report.unmapped_labels[response.strip()[:40]] += 1
            continue
        if fix_text:
            text, changed = fix_mojibake(text)
            report.mojibake_fixed += int(changed)
        sink.add(name, split, f"imhi:{name}:{split}:{row_no}", make_instruction(question, labels), text, label, labels)
        report.loaded += 1
        if limit and report.loaded >= limit:
            break
