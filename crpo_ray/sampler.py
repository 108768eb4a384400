"""Which prompts each step trains on: a seeded order that depends only on the step.

Epoch e is a permutation of all training examples drawn from ``seed + e``; step s
takes positions ``[s * P, (s + 1) * P)`` of the concatenated epochs. Resuming at step
k therefore continues at the same data position with no state to restore, and no
example is seen twice within an epoch.
"""

from __future__ import annotations

from typing import List

import numpy as np


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def step_indices(step: int, per_step: int, num_examples: int, seed: int) -> List[int]:
    """Example indices for ``step`` (0-based); wraps into the next epoch when needed."""
    if num_examples <= 0:
        raise ValueError("no training examples")
    out: List[int] = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(pos, num_examples)
        order = epoch_order(num_examples, seed, epoch)
        take = min(per_step - len(out), num_examples - offset)
        out.extend(int(i) for i in order[offset:offset + take])
        pos += take
    return out
