"""Pure scheduling rules of the rollout fleet: chunking, staleness, elastic scaling.

No Ray here: the fleet (``crpo_ray.actors.fleet``) asks these functions what to do.

Staleness: the learner's step ``s`` trains policy version ``s`` into ``s + 1``. A sample
generated with version ``v`` has staleness ``s - v``. Sync mode admits only ``0``;
async mode admits ``0 .. max_staleness``, so the fleet can generate step ``s + 1`` with
version ``s`` while the learner is still training step ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple


def chunk_bounds(num_groups: int, chunk: int) -> List[Tuple[int, int]]:
    """Half-open ranges ``[start, end)`` of at most ``chunk`` groups covering ``num_groups``."""
    if num_groups < 0 or chunk < 1:
        raise ValueError(f"chunk_bounds: num_groups {num_groups} must be >= 0 and chunk {chunk} >= 1")
    return [(a, min(a + chunk, num_groups)) for a in range(0, num_groups, chunk)]


def default_chunk(prompts_per_step: int, num_workers: int, configured: int = 0) -> int:
    """Groups per generate call: the configured value, else an even share per starting worker."""
    if configured > 0:
        return configured
    return max(1, math.ceil(prompts_per_step / max(1, num_workers)))


def staleness_ok(step: int, version: int, max_staleness: int) -> bool:
    """May weights ``version`` generate samples that the learner trains at ``step``?"""
    return 0 <= step - version <= max_staleness


def staleness_histogram(step: int, versions: Iterable[int]) -> Dict[int, int]:
    hist: Dict[int, int] = {}
    for v in versions:
        hist[step - v] = hist.get(step - v, 0) + 1
    return dict(sorted(hist.items()))


def plan_horizon(requested_step: int, max_staleness: int, total_steps: int, lookahead: int = 1) -> int:
    """The last step whose prompts are queued once the learner asks for ``requested_step``.

    Steps up to ``requested_step + max_staleness`` may be generated now; ``lookahead``
    more are queued so that workers start them the moment the weights they need arrive.
    """
    return min(requested_step + max_staleness + lookahead, total_steps - 1)


@dataclass(frozen=True)
class ScalePolicy:
    min_workers: int
    max_workers: int
    pending_threshold: int = 0  # groups waiting above this ...
    up_after_s: float = 10.0  # ... for this long: add a worker
    down_idle_s: float = 60.0  # a worker idle this long is retired


@dataclass
class ScaleDecision:
    add: int = 0
    retire: List[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class ScaleController:
    """Decides, from observations, when the pool grows and which workers it retires.

    ``observe`` is called periodically with the number of prompt groups waiting for a
    worker, the live worker count (started or starting) and, per idle worker, the time
    it became idle. It remembers since when the backlog has been above the threshold.
    """

    policy: ScalePolicy
    backlog_since: Optional[float] = None

    def observe(self, now: float, pending_groups: int, workers: int,
                idle_since: Dict[str, float]) -> ScaleDecision:
        p = self.policy
        if workers < p.min_workers:
            return ScaleDecision(add=p.min_workers - workers, reason=f"below min_workers {p.min_workers}")
        if pending_groups > p.pending_threshold:
            if self.backlog_since is None:
                self.backlog_since = now
            waited = now - self.backlog_since
            if workers == 0 or (waited >= p.up_after_s and workers < p.max_workers):
                self.backlog_since = now  # one worker per period of sustained backlog
                if workers < p.max_workers:
                    return ScaleDecision(add=1, reason=f"{pending_groups} groups pending for {waited:.1f}s")
            return ScaleDecision()
        self.backlog_since = None
        spare = workers - p.min_workers
        if spare <= 0 or pending_groups > 0:
            return ScaleDecision()
        idle_long = sorted((t, w) for w, t in idle_since.items() if now - t >= p.down_idle_s)
        retire = [w for _, w in idle_long[:spare]]
        if not retire:
            return ScaleDecision()
        return ScaleDecision(retire=retire, reason=f"idle for >= {p.down_idle_s:g}s")


def torch_threads(cores: int, learners: int, rollouts: int, mode: str) -> Tuple[int, int]:
    """Torch threads (per learner worker, per rollout worker) on a machine of ``cores`` cores.

    Sync mode: generation and training take turns, so each side may use every core while
    the other waits. Async mode: both run at once and share the cores.
    """
    cores = max(1, cores)
    if mode == "sync":
        return max(1, cores // max(1, learners)), max(1, cores // max(1, rollouts))
    both = max(1, cores // max(1, learners + rollouts))
    return both, both


def rollout_bundles(count: int, cpus: float, gpus: float, custom: Dict[str, float]) -> List[Dict[str, float]]:
    """Resource shapes to ask the autoscaler for: one bundle per rollout worker."""
    bundle = {"CPU": float(cpus), **{k: float(v) for k, v in custom.items()}}
    if gpus:
        bundle["GPU"] = float(gpus)
    return [dict(bundle) for _ in range(count)]
