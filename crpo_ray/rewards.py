"""Rewards: pure functions of text, labels and counts.

* format: ``+value`` when the completion, read with its prefill in front, is
  strictly well formed, else ``-value`` (value 0.5 in the paper);
* accuracy: ``+w`` when the answer starts with the gold label (case-insensitive,
  at a word boundary), else ``-w``; ``w = sqrt(w_class * w_dataset)`` with
  inverse-frequency weights over the training mix, each normalized to mean 1;
* stage uncertainty (optional, weight 0 by default): ``weight * (H_first - H_last)``,
  the drop of mean token entropy from the first to the last stage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

from crpo_ray.stages import prefill_text

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def is_well_formed(text: str, stage_names: Sequence[str]) -> bool:
    """Strict structure check of a full assistant turn (prefill included).

    Exactly one ``<think>...</think>`` followed by exactly one ``<answer>...</answer>``;
    every stage tag pair exactly once, in the configured order, inside ``<think>``,
    each with non-blank content; a non-blank answer.
    """
    for tag in ("think", "answer", *stage_names):
        if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
            return False
    t0, t1 = text.find("<think>"), text.find("</think>")
    a0, a1 = text.find("<answer>"), text.find("</answer>")
    if not (t0 < t1 < a0 < a1):
        return False
    if not text[a0 + len("<answer>"):a1].strip():
        return False
    prev_end = t0 + len("<think>")
    for name in stage_names:
        s, e = text.find(f"<{name}>"), text.find(f"</{name}>")
        if not (prev_end <= s < e <= t1):
            return False
        if not text[s + len(name) + 2:e].strip():
            return False
        prev_end = e + len(name) + 3
    return True


def format_reward(completion: str, stage_names: Sequence[str], *, value: float = 0.5, prefilled: bool = True) -> float:
    """``+value`` if ``prefill + completion`` is strictly well formed, else ``-value``."""
    full = (prefill_text(stage_names) if prefilled else "") + completion
    return value if is_well_formed(full, stage_names) else -value


def extract_answer(completion: str) -> Optional[str]:
    """The stripped content of the first closed ``<answer>`` block, or None."""
    m = ANSWER_RE.search(completion)
    return m.group(1).strip() if m else None


def answer_matches(answer: Optional[str], gold: str) -> bool:
    """The answer starts with the gold label, case-insensitive, at a word boundary.

    Surrounding quotes and markdown emphasis are ignored (``"Yes"``, ``**No**``).
    """
    if answer is None:
        return False
    cleaned = answer.strip().lstrip("\"'*`").strip()
    return re.match(re.escape(gold) + r"(?!\w)", cleaned, re.IGNORECASE) is not None


def match_label(answer: Optional[str], label_set: Sequence[str]) -> Optional[str]:
    """The label ``answer`` starts with (longest label first, as :func:`answer_matches`), or None.

    Used both to normalize gold labels in the data ("Yes, the post shows..." -> "yes")
    and to read predictions; what matches no label is never guessed.
    """
    if answer is None or not answer.strip():
        return None
    for label in sorted(label_set, key=len, reverse=True):
        if answer_matches(answer, label):
            return label
    return None


def accuracy_reward(completion: str, gold: str, weight: float = 1.0) -> float:
    """``+weight`` if the ``<answer>`` starts with ``gold``, else ``-weight``."""
    return weight if answer_matches(extract_answer(completion), gold) else -weight


def _inverse_frequency(counts: Mapping[str, int]) -> Dict[str, float]:
    """(1 / n_i) normalized so the weights average 1 over the keys."""
    inv = {k: 1.0 / n for k, n in counts.items() if n > 0}
    if not inv:
        return {}
    mean = sum(inv.values()) / len(inv)
    return {k: v / mean for k, v in inv.items()}


def balanced_weights(counts: Mapping[str, Mapping[str, int]]) -> Dict[str, Dict[str, float]]:
    """``w[dataset][label] = sqrt(w_class * w_dataset)`` from training-mix counts.

    ``counts[dataset][label]`` is the number of training examples. ``w_class`` is the
    inverse frequency of the label within its dataset, ``w_dataset`` the inverse size
    of the dataset within the mix, each normalized to mean 1 over its keys.
    """
    sizes = {d: sum(c.values()) for d, c in counts.items()}
    w_dataset = _inverse_frequency(sizes)
    out: Dict[str, Dict[str, float]] = {}
    for d, per_label in counts.items():
        w_class = _inverse_frequency(per_label)
        out[d] = {c: math.sqrt(w * w_dataset.get(d, 1.0)) for c, w in w_class.items()}
    return out


def uncertainty_reward(stage_entropies: Sequence[Optional[float]], weight: float = 0.0) -> float:
    """``weight * (H_first - H_last)`` over stages present; 0 with fewer than two."""
    present = [h for h in stage_entropies if h is not None]
    if weight == 0.0 or len(present) < 2:
        return 0.0
    return weight * (present[0] - present[-1])


@dataclass(frozen=True)
class RewardBreakdown:
    format: float
    accuracy: float
    uncertainty: float

    @property
    def total(self) -> float:
        return self.format + self.accuracy + self.uncertainty


def score_completion(
    completion: str,
    gold: str,
    stage_names: Sequence[str],
    *,
    accuracy_weight: float = 1.0,
    format_value: float = 0.5,
    stage_entropies: Optional[Sequence[Optional[float]]] = None,
    uncertainty_weight: float = 0.0,
    prefilled: bool = True,
) -> RewardBreakdown:
    """All reward components of one completion (their sum is the reward)."""
    return RewardBreakdown(
        format=format_reward(completion, stage_names, value=format_value, prefilled=prefilled),
        accuracy=accuracy_reward(completion, gold, accuracy_weight),
        uncertainty=uncertainty_reward(stage_entropies or [], uncertainty_weight),
    )
