"""Evaluation metrics: answer extraction, label matching, weighted F1 per dataset.

An answer that is missing, empty or names no label of its dataset is
"unparseable": it counts as wrong (it is never mapped to a guess) and is
reported per dataset.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from sklearn.metrics import f1_score

from crpo_ray.rewards import extract_answer, match_label

UNPARSEABLE = "<unparseable>"

__all__ = ["UNPARSEABLE", "match_label", "predict_label", "weighted_f1", "evaluate_predictions", "EvalResult", "DatasetScore"]


def predict_label(completion: str, label_set: Sequence[str]) -> Optional[str]:
    """Label predicted by a completion: its ``<answer>`` matched against the label set."""
    return match_label(extract_answer(completion), label_set)


def weighted_f1(golds: Sequence[str], preds: Sequence[Optional[str]], label_set: Sequence[str]) -> float:
    """scikit-learn's weighted F1 over ``label_set``; None predictions count as wrong."""
    if not golds:
        return float("nan")
    y_pred = [p if p is not None else UNPARSEABLE for p in preds]
    return float(f1_score(list(golds), y_pred, labels=list(label_set), average="weighted", zero_division=0))


@dataclass
class DatasetScore:
    dataset: str
    n: int
    weighted_f1: float
    accuracy: float
    unparseable: int
    label_set: List[str] = field(default_factory=list)

    @property
    def unparseable_rate(self) -> float:
        return self.unparseable / self.n if self.n else 0.0


@dataclass
class EvalResult:
    per_dataset: Dict[str, DatasetScore]

    @property
    def mean_weighted_f1(self) -> float:
        scores = [s.weighted_f1 for s in self.per_dataset.values()]
        return sum(scores) / len(scores) if scores else float("nan")

    @property
    def unparseable(self) -> int:
        return sum(s.unparseable for s in self.per_dataset.values())

    def as_dict(self) -> dict:
        return {
            "mean_weighted_f1": self.mean_weighted_f1,
            "unparseable": self.unparseable,
            "datasets": {
                d: {"n": s.n, "weighted_f1": s.weighted_f1, "accuracy": s.accuracy,
                    "unparseable": s.unparseable, "unparseable_rate": s.unparseable_rate}
                for d, s in sorted(self.per_dataset.items())
            },
        }


def evaluate_predictions(
    datasets: Sequence[str],
    golds: Sequence[str],
    completions: Sequence[str],
    label_sets: Sequence[Sequence[str]],
) -> EvalResult:
    """Weighted F1 per dataset (and their mean) from raw completions."""
    if not (len(datasets) == len(golds) == len(completions) == len(label_sets)):
        raise ValueError("datasets, golds, completions and label_sets must have the same length")
    golds_by, preds_by, labels_by = defaultdict(list), defaultdict(list), {}
    for d, g, c, ls in zip(datasets, golds, completions, label_sets):
        golds_by[d].append(g)
        preds_by[d].append(predict_label(c, ls))
        labels_by[d] = list(ls)
    out = {}
    for d, gs in golds_by.items():
        ps, ls = preds_by[d], labels_by[d]
        correct = sum(1 for g, p in zip(gs, ps) if p == g)
        out[d] = DatasetScore(
            dataset=d, n=len(gs), weighted_f1=weighted_f1(gs, ps, ls),
            accuracy=correct / len(gs), unparseable=sum(1 for p in ps if p is None), label_set=ls,
        )
    return EvalResult(out)
