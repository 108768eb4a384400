"""Seeded step order (resumable) and the padded training batch layout."""

import torch

from crpo_ray.batching import completion_logits, make_batch, micro_batches
from crpo_ray.sampler import step_indices


def test_epoch_covers_everything_once():
    n, per = 10, 3
    seen = [i for s in range(3) for i in step_indices(s, per, n, seed=0)] + step_indices(3, per, n, 0)[:1]
    assert sorted(seen) == list(range(10))
    assert step_indices(5, per, n, 0) == step_indices(5, per, n, 0)  # depends only on the step
    assert step_indices(0, per, n, 0) != step_indices(0, per, n, 1)


def test_wraps_into_next_epoch():
    idx = step_indices(1, 4, 6, seed=3)  # positions 4..7: two from epoch 0, two from epoch 1
    assert len(idx) == 4 and all(0 <= i < 6 for i in idx)


def test_batch_layout():
    b = make_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], [[-0.1, -0.2], [-0.3, -0.4, -0.5]],
                   [[0, 0], [1, -1, 2]], [1.0, -1.0], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert b.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b.logit_index.tolist() == [[2, 3, 4], [0, 1, 2]]
    assert b.stage_ids.tolist() == [[0, 0, -1], [1, -1, 2]]
    # logits at logit_index predict the response tokens
    logits = torch.arange(5.0).view(1, 5, 1).expand(2, 5, 1)
    assert completion_logits(logits, b.logit_index)[..., 0].tolist() == [[2, 3, 4], [0, 1, 2]]
    parts = micro_batches(b, 1)
    assert len(parts) == 2 and parts[1].input_ids.tolist() == [[4, 7, 8, 9, 0]]
    assert parts[0].zero_weight().mask.sum() == 0
