"""RolloutPool: the fleet's rollout workers, driven by asyncio inside the fleet actor.

Each worker has one driver coroutine that repeats: load the newest published weights
when its own differ, take the first queued chunk its weights may generate (the
staleness rule of :mod:`crpo_ray.scheduling`), generate, hand the table on. A worker
that dies (SIGKILL, lost node) puts its chunk back at the head of the queue and leaves
the pool; the monitor brings the pool back to size. The monitor also grows the pool
while prompt groups keep waiting, up to ``max_workers``, asking Ray's autoscaler for
the resources, and retires workers that stay idle, down to ``min_workers``. A new
worker loads the current weights before its first generation.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional

import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, OwnerDiedError, RayActorError

from crpo_ray.scheduling import ScaleController, ScalePolicy, staleness_ok

WORKER_LOST = (RayActorError, ActorUnavailableError, ObjectLostError)


class PoolError(RuntimeError):
    """The pool cannot go on (a chunk failed too often, workers cannot start, a worker raised)."""


@dataclass
class WorkItem:
    key: tuple  # ("train", step, chunk) or ("eval", request, chunk)
    step: int  # the training step the samples are for; -1 for evaluation
    prompts: pa.Table
    n: int
    greedy: bool
    epoch: int
    attempts: int = 0

    @property
    def groups(self) -> int:
        return self.prompts.num_rows


class _Slot:
    def __init__(self, wid: str, handle):
        self.id, self.handle = wid, handle
        self.version: Optional[int] = None  # unknown until the first load
        self.started = False
        self.busy = False
        self.retiring = False
        self.idle_since: Optional[float] = None
        self.task: Optional[asyncio.Task] = None
        self.initial = False  # one of the first workers: a sync publish waits for it to start


class RolloutPool:
    def __init__(self, factory: Callable[[str], object], policy: ScalePolicy, *, max_staleness: int,
                 max_attempts: int, on_generated: Callable, request: Optional[Callable[[int], None]] = None,
                 interval_s: float = 1.0, log: Callable[[str], None] = print):
        self.factory, self.policy = factory, policy
        self.max_staleness, self.max_attempts = max_staleness, max_attempts
        self.on_generated, self.request, self.interval_s, self.log = on_generated, request, interval_s, log
        self.controller = ScaleController(policy)
        self.pending: Deque[WorkItem] = collections.deque()
        self.slots: Dict[str, _Slot] = {}
        self.latest: Optional[tuple] = None  # ([ref], version) of the newest published weights
        self.fatal: Optional[BaseException] = None
        self.cond: Optional[asyncio.Condition] = None
        self.stats = collections.Counter()
        self.events: List[str] = []
        self._next_id = 0
        self._start_failures = 0
        self._requested = -1  # workers last asked of the autoscaler
        self._monitor: Optional[asyncio.Task] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, workers: int) -> None:
        """Create the first workers and the monitor; call from the event loop."""
        self.cond = asyncio.Condition()
        for _ in range(workers):
            self._add().initial = True
        self._request_size()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _add(self) -> _Slot:
        wid = f"rollout-{self._next_id}"
        self._next_id += 1
        slot = _Slot(wid, self.factory(wid))
        self.slots[wid] = slot
        slot.task = asyncio.get_running_loop().create_task(self._drive(slot))
        return slot

    def live(self) -> List[_Slot]:
        return [s for s in self.slots.values() if not s.retiring]

    def _request_size(self) -> None:
        n = len(self.live())
        if self.request is not None and n != self._requested:
            self._requested = n
            try:
                self.request(n)
            except Exception as exc:  # noqa: BLE001 - a hint to the autoscaler; never fatal
                self.log(f"fleet: request_resources failed ({type(exc).__name__}: {exc})")

    async def _notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    def event(self, message: str) -> None:
        """A scaling or failure decision: printed, and kept for the step's ``fleet_events``."""
        self.events.append(message)
        self.log(f"fleet: {message}")

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            self.log(f"fleet: fatal: {exc}")

    # ------------------------------------------------------------------ work queue and weights

    async def submit(self, items: List[WorkItem], front: bool = False) -> None:
        async with self.cond:
            if front:
                self.pending.extendleft(reversed(items))
            else:
                self.pending.extend(items)
            self.cond.notify_all()

    async def drop_pending(self) -> None:
        async with self.cond:
            self.pending.clear()
            self.cond.notify_all()

    async def publish(self, ref, version: int) -> None:
        async with self.cond:
            self.latest = (ref, version)
            self.cond.notify_all()

    async def wait_version(self, version: int) -> List[int]:
        """Until every started worker, and each first worker, holds ``version``; their versions.

        Workers added later that are still starting (e.g. waiting for the autoscaler's node)
        are not waited for: they load the newest weights before their first generation.
        """
        async with self.cond:
            while self.fatal is None and any(s.version != version for s in self.live() if s.started or s.initial):
                await self.cond.wait()
        if self.fatal is not None:
            raise self.fatal
        return [s.version for s in self.live() if s.started]

    def _eligible(self, slot: _Slot, item: WorkItem) -> bool:
        if item.step < 0:  # evaluation: the newest weights (or whatever is loaded before any publish)
            return self.latest is None or slot.version == self.latest[1]
        return slot.version is not None and staleness_ok(item.step, slot.version, self.max_staleness)

    async def _next(self, slot: _Slot):
        """("load", ref, version) | ("work", item) | None when the worker should stop."""
        waited_from = None
        async with self.cond:
            while True:
                if slot.retiring or self.fatal is not None:
                    return None
                if self.latest is not None and slot.version != self.latest[1]:
                    self._account_wait(waited_from)
                    return ("load", *self.latest)
                for item in self.pending:
                    if self._eligible(slot, item):
                        self.pending.remove(item)
                        slot.busy, slot.idle_since = True, None
                        self._account_wait(waited_from)
                        return ("work", item)
                if self.pending and waited_from is None:
                    waited_from = time.perf_counter()  # work exists, but not for these weights
                if slot.idle_since is None:
                    slot.idle_since = time.monotonic()
                await self.cond.wait()

    def _account_wait(self, since: Optional[float]) -> None:
        if since is not None:
            self.stats["wait_weights_s"] += time.perf_counter() - since

    # ------------------------------------------------------------------ one worker

    async def _drive(self, slot: _Slot) -> None:
        try:
            if self.latest is None:
                slot.version = await slot.handle.get_version.remote()  # waits for the actor to start
                slot.started = True
                await self._notify()
            while True:
                job = await self._next(slot)
                if job is None:
                    break
                if job[0] == "load":
                    await self._load(slot, job[1], job[2])
                else:
                    await self._run(slot, job[1])
                    slot.busy = False
                    await self._notify()
        except WORKER_LOST as exc:
            await self._lost(slot, exc)
        except Exception as exc:  # noqa: BLE001 - a worker raised: nothing to retry
            self._fail(PoolError(f"{slot.id}: {type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"))
            await self._notify()
        finally:
            if slot.retiring or slot.id not in self.slots or self.fatal is not None:
                self.slots.pop(slot.id, None)
                ray.kill(slot.handle, no_restart=True)

    async def _load(self, slot: _Slot, ref_list, version: int) -> None:
        t = time.perf_counter()
        try:
            report = await slot.handle.load_weights.remote(ref_list[0], version)
        except (OwnerDiedError, ObjectLostError):  # the learner that published them is gone
            async with self.cond:
                if self.latest is not None and self.latest[1] == version:
                    self.latest = None
            return
        if report["version"] != version:
            raise PoolError(f"{slot.id} reports weights version {report['version']}, expected {version}")
        slot.version, slot.started = version, True
        self.stats["weight_loads"] += 1
        self.stats["load_s"] += time.perf_counter() - t
        await self._notify()

    async def _run(self, slot: _Slot, item: WorkItem) -> None:
        item.attempts += 1
        t = time.perf_counter()
        ref = slot.handle.generate.remote(item.prompts, item.n, item.greedy)
        try:
            table = await ref
        except WORKER_LOST:
            await self._requeue(item, slot.id)
            raise
        self._start_failures = 0
        self.stats["chunks"] += 1
        self.on_generated(item, table, ref, slot.id, time.perf_counter() - t)

    async def _requeue(self, item: WorkItem, wid: str) -> None:
        if item.attempts >= self.max_attempts:
            self._fail(PoolError(f"chunk {item.key} lost its rollout worker {item.attempts} times; giving up"))
            return
        self.stats["redispatched_groups"] += item.groups
        self.event(f"{wid} lost mid-generation: {item.groups} prompt groups of {item.key} re-dispatched")
        await self.submit([item], front=True)

    async def _lost(self, slot: _Slot, exc: BaseException) -> None:
        self.slots.pop(slot.id, None)
        self.stats["worker_restarts"] += 1
        if not slot.started:
            self._start_failures += 1
            if self._start_failures >= self.max_attempts:
                self._fail(PoolError(f"rollout workers fail to start ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''})"))
        self.event(f"{slot.id} lost ({type(exc).__name__}); pool {len(self.live())}")
        await self._notify()

    # ------------------------------------------------------------------ elastic size

    async def _watch(self) -> None:
        while self.fatal is None:
            await asyncio.sleep(self.interval_s)
            self.step_scaling(time.monotonic())

    def step_scaling(self, now: float) -> None:
        live = self.live()
        idle = {s.id: s.idle_since for s in live if s.started and not s.busy and s.idle_since is not None}
        groups = self.ready_groups()
        decision = self.controller.observe(now, groups, len(live), idle)
        for _ in range(decision.add):
            slot = self._add()
            self.stats["scale_up"] += 1
            self.event(f"+{slot.id} ({decision.reason}); pool {len(self.live())}")
        for wid in decision.retire:
            slot = self.slots.get(wid)
            if slot is None or slot.busy:
                continue
            slot.retiring = True
            self.stats["scale_down"] += 1
            self.event(f"-{wid} ({decision.reason}); pool {len(self.live())}")
        if decision.add or decision.retire:
            self._request_size()
            asyncio.get_running_loop().create_task(self._notify())

    def ready_groups(self) -> int:
        """Queued groups that the newest weights may generate: more workers would start them now."""
        v = self.latest[1] if self.latest is not None else None
        return sum(i.groups for i in self.pending
                   if i.step < 0 or v is None or staleness_ok(i.step, v, self.max_staleness))

    def drain_events(self) -> List[str]:
        out, self.events = self.events, []
        return out

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for s in list(self.slots.values()):
            s.retiring = True
        await self._notify()
