"""Pure rules of the rollout fleet: chunking, staleness, elastic scaling decisions."""

import pytest

from crpo_ray.config import ConfigError, load_config, pool_bounds
from crpo_ray.scheduling import (ScaleController, ScalePolicy, chunk_bounds, default_chunk,
                                 plan_horizon, rollout_bundles, staleness_histogram, staleness_ok,
                                 torch_threads)


def test_chunks_cover_every_group_once():
    for n in range(0, 13):
        for c in range(1, 6):
            covered = [g for a, b in chunk_bounds(n, c) for g in range(a, b)]
            assert covered == list(range(n))
            assert all(b - a <= c for a, b in chunk_bounds(n, c))
    with pytest.raises(ValueError):
        chunk_bounds(4, 0)
    assert default_chunk(8, 3) == 3 and default_chunk(8, 3, configured=1) == 1 and default_chunk(2, 4) == 1


def test_staleness_rule():
    assert staleness_ok(5, 5, 0) and not staleness_ok(5, 4, 0)
    assert staleness_ok(5, 4, 1) and not staleness_ok(5, 3, 1)
    assert not staleness_ok(5, 6, 3)  # never weights newer than the step
    assert staleness_histogram(7, [7, 6, 6, 7, 7]) == {0: 3, 1: 2}
    assert plan_horizon(3, 0, 10) == 4 and plan_horizon(3, 1, 10) == 5 and plan_horizon(8, 2, 10) == 9
    assert plan_horizon(3, 0, 10, lookahead=0) == 3


def test_scale_up_only_after_sustained_backlog_and_within_max():
    c = ScaleController(ScalePolicy(min_workers=1, max_workers=2, pending_threshold=2, up_after_s=5, down_idle_s=30))
    assert c.observe(0.0, pending_groups=6, workers=1, idle_since={}).add == 0  # backlog starts
    assert c.observe(4.0, 6, 1, {}).add == 0
    d = c.observe(5.5, 6, 1, {})
    assert d.add == 1 and "pending" in d.reason
    assert c.observe(20.0, 6, 2, {}).add == 0  # at max_workers
    c2 = ScaleController(ScalePolicy(1, 3, 2, 5, 30))
    c2.observe(0.0, 6, 1, {})
    assert c2.observe(3.0, 1, 1, {}).add == 0  # backlog cleared: the clock restarts
    assert c2.observe(7.0, 6, 1, {}).add == 0
    assert c2.observe(12.5, 6, 1, {}).add == 1


def test_scale_down_retires_longest_idle_first_but_never_below_min():
    c = ScaleController(ScalePolicy(min_workers=1, max_workers=3, up_after_s=5, down_idle_s=10))
    idle = {"a": 0.0, "b": 5.0, "c": 8.0}
    assert c.observe(9.0, 0, 3, idle).retire == []
    assert c.observe(15.5, 0, 3, idle).retire == ["a", "b"]
    assert c.observe(100.0, 0, 3, idle).retire == ["a", "b"]  # min_workers 1 stays
    assert c.observe(100.0, 3, 3, idle).retire == []  # work waiting: nobody retires


def test_pool_from_zero_and_back_to_min():
    c = ScaleController(ScalePolicy(min_workers=0, max_workers=2, up_after_s=60, down_idle_s=10))
    assert c.observe(0.0, 4, 0, {}).add == 1  # an empty pool with work starts a worker at once
    assert c.observe(0.0, 0, 0, {}).add == 0
    assert c.observe(50.0, 0, 1, {"w": 30.0}).retire == ["w"]
    c_min = ScaleController(ScalePolicy(min_workers=2, max_workers=2))
    assert c_min.observe(0.0, 0, 1, {}).add == 1  # a lost worker is replaced


def test_bundles():
    assert rollout_bundles(2, 1, 0, {"rollout": 1}) == [{"CPU": 1.0, "rollout": 1.0}] * 2
    assert rollout_bundles(1, 1, 1, {})[0]["GPU"] == 1.0


def test_torch_threads_turns_in_sync_shares_in_async():
    # sync: generation and training take turns, so each side gets every core while it runs
    assert torch_threads(8, 2, 1, "sync") == (4, 8)
    assert torch_threads(2, 2, 1, "sync") == (1, 2)
    # async: both run at once and split the cores
    assert torch_threads(8, 2, 2, "async") == (2, 2)
    assert torch_threads(2, 2, 1, "async") == (1, 1)  # never below one thread
    assert torch_threads(0, 1, 0, "sync") == (1, 1)


def test_pool_and_placement_config_checked():
    cfg = load_config(None, ["rollout.num_workers=2", "rollout.min_workers=0", "rollout.max_workers=4",
                             "cluster.rollout_resources.rollout=1", "cluster.learner_placement=spread"])
    assert pool_bounds(cfg.rollout) == (0, 4) and cfg.cluster.rollout_resources == {"rollout": 1.0}
    assert pool_bounds(load_config(None, ["rollout.num_workers=3"]).rollout) == (3, 3)
    for bad, key in ((["rollout.max_workers=1", "rollout.num_workers=2"], "rollout.min_workers"),
                     (["cluster.learner_placement=strict"], "cluster.learner_placement"),
                     (["cluster.rollout_resources.CPU=2"], "cluster.rollout_resources.CPU"),
                     (["rollout.max_attempts=0"], "rollout.max_attempts")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, bad)
