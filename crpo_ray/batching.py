"""Scored Arrow rows -> padded training tensors. Pure (no Ray, no config objects).

A :class:`TrainBatch` holds ``B`` sequences (prompt + completion, right-padded to
``L``) and completion-aligned tensors of width ``T`` (the longest completion):

* ``input_ids``, ``attention_mask``: ``[B, L]``
* ``logit_index``: ``[B, T]`` position in ``input_ids`` whose logits predict completion
  token t (``prompt_len - 1 + t``, clamped on padding)
* ``response_ids``, ``behavior_logprobs``, ``stage_ids``, ``mask``: ``[B, T]``
* ``advantages``: ``[B]``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import pyarrow as pa
import torch


@dataclass
class TrainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logit_index: torch.Tensor
    response_ids: torch.Tensor
    behavior_logprobs: torch.Tensor
    stage_ids: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def zero_weight(self) -> "TrainBatch":
        """The same shapes with every completion token masked out (a no-op micro-batch)."""
        return TrainBatch(self.input_ids, self.attention_mask, self.logit_index, self.response_ids,
                          self.behavior_logprobs, self.stage_ids, torch.zeros_like(self.mask), self.advantages)


def make_batch(prompts: List[List[int]], responses: List[List[int]], behavior: List[List[float]],
               stage_ids: List[List[int]], advantages: List[float], pad_id: int) -> TrainBatch:
    b = len(prompts)
    if b == 0:
        raise ValueError("empty batch")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    L, T = max(lengths), max(max(len(r) for r in responses), 1)
    input_ids = torch.full((b, L), pad_id, dtype=torch.long)
    attention = torch.zeros((b, L), dtype=torch.long)
    logit_index = torch.zeros((b, T), dtype=torch.long)
    resp = torch.full((b, T), pad_id, dtype=torch.long)
    beh = torch.zeros((b, T), dtype=torch.float32)
    sids = torch.full((b, T), -1, dtype=torch.long)
    mask = torch.zeros((b, T), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n, t = len(p), len(r)
        input_ids[i, :n + t] = torch.tensor(p + r, dtype=torch.long)
        attention[i, :n + t] = 1
        logit_index[i] = torch.clamp(torch.arange(T) + n - 1, max=L - 1)
        if t:
            resp[i, :t] = torch.tensor(r, dtype=torch.long)
            beh[i, :t] = torch.tensor(behavior[i], dtype=torch.float32)
            sids[i, :t] = torch.tensor(stage_ids[i], dtype=torch.long)
            mask[i, :t] = 1.0
    return TrainBatch(input_ids, attention, logit_index, resp, beh, sids, mask,
                      torch.tensor(advantages, dtype=torch.float32))


def batch_from_table(table: pa.Table, pad_id: int) -> TrainBatch:
    """A :class:`TrainBatch` from rows of ``schemas.SCORED``."""
    return make_batch(table.column("prompt_ids").to_pylist(), table.column("response_ids").to_pylist(),
                      table.column("behavior_logprobs").to_pylist(), table.column("stage_ids").to_pylist(),
                      table.column("advantage").to_pylist(), pad_id)


def completion_logits(logits: torch.Tensor, logit_index: torch.Tensor) -> torch.Tensor:
    """``[B, L, V]`` model logits -> ``[B, T, V]`` logits that predict each completion token."""
    idx = logit_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return torch.gather(logits, 1, idx)


def micro_batches(batch: TrainBatch, size: int) -> List[TrainBatch]:
    out = []
    for s in range(0, batch.size, size):
        sl = slice(s, s + size)
        out.append(TrainBatch(*(getattr(batch, f)[sl] for f in
                                ("input_ids", "attention_mask", "logit_index", "response_ids", "behavior_logprobs",
                                 "stage_ids", "mask", "advantages"))))
    return out
