"""The learner: FSDP2-sharded policy (and frozen reference), one CRPO update per step.

Runs inside Ray Train workers (see :mod:`crpo_ray.actors.train_loop`); the functions
here only need ``torch.distributed`` to be initialized (gloo on CPU, nccl on GPU),
so a test can drive them in any process group.

Normalization across ranks: every rank computes its part of the global loss with the
global token and sequence counts, so the parts sum to the loss of the whole batch.
FSDP averages gradients over ranks, so each part is scaled by the world size before
``backward``: one update on N ranks equals the same update on one rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from crpo_ray.algo import crpo_loss, token_logprobs_and_entropy
from crpo_ray.batching import TrainBatch, completion_logits, micro_batches
from crpo_ray.engines import DTYPES



@dataclass(frozen=True)
class LossParams:
    stage_betas: Sequence[float]
    clip_low: float
    clip_high: float
    kl_beta: float
    aggregation: str
    temperature: float
    max_completion_length: int
    recompute_old_logprobs: bool = True
    # None: samples are on-policy (sync). "decoupled" | "behavior_ratio": stale samples (async).
    off_policy: Optional[str] = None
    is_cap: float = 2.0
    entropy_ceiling: float = 0.0


def _decoder_layers(model) -> List[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers at model.model.layers to shard")
    return list(layers)


def load_policy(model_dir: str, *, dtype: str = "float32", trainable: bool = True, device: str = "cpu",
                trust_remote_code: bool = False, gradient_checkpointing: bool = False):
    """Load a Hugging Face causal LM and shard it with FSDP2 (each decoder layer, then the root)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.to(device)
    if gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    mp = None
    if dtype != "float32":
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _forward_logprobs(model, mb: TrainBatch, temperature: float):
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
    logits = completion_logits(out.logits, mb.logit_index)
    return token_logprobs_and_entropy(logits, mb.response_ids, temperature)


def _all_reduce(values: List[float], op=dist.ReduceOp.SUM) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def _move(mb: TrainBatch, device) -> TrainBatch:
    return TrainBatch(*(getattr(mb, f).to(device) for f in TrainBatch.__dataclass_fields__))


def _old_and_behavior(lp, mb: TrainBatch, params: LossParams):
    """The log-probs the ratio is clipped against, and the behavior ones for the IS weight (or None).

    One update per batch, so the proximal policy of decoupled PPO is the learner's weights
    before this update: ``lp`` detached.
    """
    if params.off_policy == "decoupled":
        return lp.detach(), mb.behavior_logprobs
    if params.off_policy == "behavior_ratio" or not params.recompute_old_logprobs:
        return mb.behavior_logprobs, None
    return lp.detach(), None


def train_step(model, ref_model, optimizer, scheduler, batch: TrainBatch, params: LossParams, *,
               micro_batch_size: int, grad_clip: float, device="cpu") -> Dict[str, float]:
    """One CRPO update over this rank's part of the batch; collective across ranks."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    mbs = micro_batches(batch, micro_batch_size)
    n_tok, n_seq, n_mb = _all_reduce([batch.mask.sum().item(), float(batch.size), float(len(mbs))])
    n_mb_max = int(_all_reduce([float(len(mbs))], dist.ReduceOp.MAX)[0])
    mbs = mbs + [mbs[-1].zero_weight()] * (n_mb_max - len(mbs))  # same number of collectives on every rank
    sums: Dict[str, float] = {}
    model.train()
    for mb in mbs:
        mb = _move(mb, device)
        lp, ent = _forward_logprobs(model, mb, params.temperature)
        old, behavior = _old_and_behavior(lp, mb, params)
        ref = None
        if ref_model is not None and params.kl_beta != 0.0:
            with torch.no_grad():
                ref, _ = _forward_logprobs(ref_model, mb, params.temperature)
        loss, m = crpo_loss(lp, old, ref, ent, mb.advantages, mb.stage_ids, mb.mask,
                            stage_betas=params.stage_betas, clip_low=params.clip_low, clip_high=params.clip_high,
                            kl_beta=params.kl_beta, aggregation=params.aggregation, num_tokens=n_tok,
                            num_sequences=n_seq, max_completion_length=params.max_completion_length,
                            behavior_logprobs=behavior, is_cap=params.is_cap,
                            entropy_ceiling=params.entropy_ceiling)
        (loss * world).backward()
        tokens = mb.mask.sum().item()
        diff = ((lp.detach() - mb.behavior_logprobs).abs() * mb.mask).sum().item()
        for key in ("loss", "pg_loss", "entropy_term"):
            sums[key] = sums.get(key, 0.0) + m[key].item()
        for key, value in m.items():
            if key not in ("loss", "pg_loss", "entropy_term", "num_tokens") and not key.startswith("stage_tokens"):
                weight = tokens if not key.startswith("stage_entropy") else m[key.replace("entropy", "tokens")].item()
                sums[f"w:{key}"] = sums.get(f"w:{key}", 0.0) + value.item() * weight
                sums[f"n:{key}"] = sums.get(f"n:{key}", 0.0) + weight
        sums["w:logprob_abs_diff"] = sums.get("w:logprob_abs_diff", 0.0) + diff
        sums["n:logprob_abs_diff"] = sums.get("n:logprob_abs_diff", 0.0) + tokens
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    keys = sorted(sums)
    total = dict(zip(keys, _all_reduce([sums[k] for k in keys])))
    out = {k: total[k] for k in ("loss", "pg_loss", "entropy_term")}
    for k in keys:
        if k.startswith("w:"):
            name = k[2:]
            out[name] = total[k] / total[f"n:{name}"] if total[f"n:{name}"] else float("nan")
    out.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0], train_tokens=n_tok, train_sequences=n_seq)
    return out


def lr_lambda(schedule: str, warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


def full_state_dict(model) -> Dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0 (CPU), ``{}`` on other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: Optional[dict]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
