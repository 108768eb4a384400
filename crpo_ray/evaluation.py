"""Evaluation report: weighted F1 per dataset with baselines, confusion matrices and failure counts.

Pure (lists in, dicts out). Every answer that does not name a label of its dataset is
counted under a reason and shown as the ``<unparseable>`` column of the confusion
matrix; it is scored as wrong, never dropped and never mapped to a guess.

Reasons an answer is unparseable:

* ``no_answer``: no closed ``<answer>...</answer>`` block (``truncated`` when generation
  also hit ``max_new_tokens``, i.e. finish reason ``length``),
* ``empty``: the block is empty,
* ``unknown_label``: the block names no label of the dataset.

Baselines, beside every figure:

* ``majority``: always predict the most frequent gold label *of the evaluated split*
  (ties: alphabetical first). This is an upper bound for a constant predictor.
* ``uniform``: the expected weighted F1 of guessing uniformly over the label set,
  estimated by a seeded simulation (``UNIFORM_DRAWS`` draws, seed ``UNIFORM_SEED``).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence

from crpo_ray.metrics import UNPARSEABLE, weighted_f1
from crpo_ray.rewards import extract_answer, match_label

UNIFORM_DRAWS = 200
UNIFORM_SEED = 0
REASONS = ("no_answer", "truncated", "empty", "unknown_label")


def classify_answer(completion: str, label_set: Sequence[str], finish_reason: str = "stop"):
    """(predicted label or None, reason or None) for one completion."""
    answer = extract_answer(completion)
    if answer is None:
        return None, ("truncated" if finish_reason == "length" else "no_answer")
    if not answer.strip():
        return None, "empty"
    label = match_label(answer, label_set)
    return (label, None) if label is not None else (None, "unknown_label")


def majority_baseline(golds: Sequence[str], label_set: Sequence[str]) -> dict:
    counts = Counter(golds)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    preds = [top] * len(golds)
    return {"label": top, "weighted_f1": weighted_f1(golds, preds, label_set),
            "accuracy": counts[top] / len(golds)}


def uniform_baseline(golds: Sequence[str], label_set: Sequence[str], draws: int = UNIFORM_DRAWS,
                     seed: int = UNIFORM_SEED) -> dict:
    rng = random.Random(seed)
    labels = list(label_set)
    f1s = [weighted_f1(golds, [rng.choice(labels) for _ in golds], labels) for _ in range(draws)]
    return {"weighted_f1": sum(f1s) / len(f1s), "accuracy": 1.0 / len(labels), "draws": draws, "seed": seed}


def confusion_matrix(golds: Sequence[str], preds: Sequence[Optional[str]], label_set: Sequence[str]) -> dict:
    """Rows: gold labels; columns: the label set plus ``<unparseable>``."""
    cols = list(label_set) + [UNPARSEABLE]
    counts = Counter((g, p if p is not None else UNPARSEABLE) for g, p in zip(golds, preds))
    return {"labels": list(label_set), "columns": cols,
            "matrix": [[counts[(g, c)] for c in cols] for g in label_set]}


def _dataset_report(rows: List[dict]) -> dict:
    label_set = list(rows[0]["label_set"])
    golds = [r["label"] for r in rows]
    preds, reasons = [], Counter()
    for r in rows:
        p, why = classify_answer(r["completion"], r["label_set"], r.get("finish_reason", "stop"))
        preds.append(p)
        if why:
            reasons[why] += 1
    n = len(rows)
    unparseable = sum(reasons.values())
    return {
        "n": n,
        "weighted_f1": weighted_f1(golds, preds, label_set),
        "accuracy": sum(1 for g, p in zip(golds, preds) if p == g) / n,
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n,
        "unparseable_reasons": {k: reasons.get(k, 0) for k in REASONS},
        "truncated_responses": sum(1 for r in rows if r.get("finish_reason") == "length"),
        "prompts_truncated": sum(1 for r in rows if r.get("prompt_truncated")),
        "label_set": label_set,
        "gold_counts": dict(sorted(Counter(golds).items())),
        "baselines": {"majority": majority_baseline(golds, label_set), "uniform": uniform_baseline(golds, label_set)},
        "confusion": confusion_matrix(golds, preds, label_set),
    }


def _nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def evaluate_rows(rows: Sequence[dict]) -> dict:
    """Full evaluation report from rows with keys dataset, label, label_set, completion,
    finish_reason and prompt_truncated. Keeps the keys of ``EvalResult.as_dict``."""
    by: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        by[r["dataset"]].append(r)
    datasets = {d: _dataset_report(rs) for d, rs in sorted(by.items())}
    per = list(datasets.values())
    return {
        "n": len(rows),
        "mean_weighted_f1": _nanmean([s["weighted_f1"] for s in per]),
        "baselines": {b: {"mean_weighted_f1": _nanmean([s["baselines"][b]["weighted_f1"] for s in per])}
                      for b in ("majority", "uniform")},
        "unparseable": sum(s["unparseable"] for s in per),
        "unparseable_rate": sum(s["unparseable"] for s in per) / len(rows) if rows else 0.0,
        "unparseable_reasons": {k: sum(s["unparseable_reasons"][k] for s in per) for k in REASONS},
        "truncated_responses": sum(s["truncated_responses"] for s in per),
        "prompts_truncated": sum(s["prompts_truncated"] for s in per),
        "datasets": datasets,
    }


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def to_markdown(result: dict) -> str:
    """The eval table (with baselines), failure counts and confusion matrices, as Markdown."""
    lines = []
    if result.get("model"):
        lines += [f"Model: `{result['model']}`", ""]
    lines += ["| dataset | n | weighted F1 | majority F1 | uniform F1 | accuracy | unparseable | truncated answers |"
              " truncated prompts |", "|---|---|---|---|---|---|---|---|---|"]
    for d, s in result["datasets"].items():
        b = s["baselines"]
        lines.append(f"| {d} | {s['n']} | {_f(s['weighted_f1'])} | {_f(b['majority']['weighted_f1'])} "
                     f"({b['majority']['label']}) | {_f(b['uniform']['weighted_f1'])} | {_f(s['accuracy'])} | "
                     f"{s['unparseable']} ({s['unparseable_rate']:.0%}) | {s['truncated_responses']} | "
                     f"{s['prompts_truncated']} |")
    mb = result["baselines"]
    lines.append(f"| **mean** | {result['n']} | {_f(result['mean_weighted_f1'])} | "
                 f"{_f(mb['majority']['mean_weighted_f1'])} | {_f(mb['uniform']['mean_weighted_f1'])} | | "
                 f"{result['unparseable']} ({result['unparseable_rate']:.0%}) | {result['truncated_responses']} | "
                 f"{result['prompts_truncated']} |")
    reasons = ", ".join(f"{k} {v}" for k, v in result["unparseable_reasons"].items())
    lines += ["", f"Unparseable answers by reason: {reasons}."]
    if result.get("unmapped_gold_labels"):
        lines.append(f"Gold labels outside the label set (skipped by the loader): {result['unmapped_gold_labels']}.")
    lines += ["", "Majority: most frequent gold label of the evaluated split. Uniform: expected weighted F1 of "
              f"uniform guessing ({UNIFORM_DRAWS} seeded draws)."]
    for d, s in result["datasets"].items():
        cm = s["confusion"]
        lines += ["", f"### Confusion matrix: {d} (rows gold, columns predicted)", "",
                  "| gold \\ pred | " + " | ".join(cm["columns"]) + " |", "|---" * (len(cm["columns"]) + 1) + "|"]
        lines += [f"| {g} | " + " | ".join(str(v) for v in row) + " |" for g, row in zip(cm["labels"], cm["matrix"])]
    return "\n".join(lines) + "\n"
