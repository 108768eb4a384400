"""CRPO: GRPO plus stage-wise entropy regularization. Pure tensor functions.

Shapes: ``B`` sequences (prompts x group size), ``T`` completion tokens (padded).
Nothing here knows about Ray, configs or models; the learner calls these with
tensors and the config's numbers.

The loss (DESIGN.md section 3)::

    ratio      = exp(logprobs - old_logprobs)                        [B, T]
    pg         = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    pg         = pg * min(exp(old_logprobs - behavior_logprobs), is_cap)   (only when
                 behavior log-probs are given: decoupled PPO for stale samples; no grad)
    kl         = exp(ref - logprobs) - (ref - logprobs) - 1          (k3 estimator)
    per_token  = pg + kl_beta * kl
    loss       = aggregate(per_token, mask)
               + sum_k beta_k * mean_b( masked mean over stage-k tokens of entropy[b] )

With every ``beta_k == 0`` the stage term is skipped and the loss is GRPO's exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch

Tensor = torch.Tensor

# --------------------------------------------------------------------------- schedules

SCHEDULES: Dict[str, Callable[..., list]] = {}


def register_schedule(name: str):
    def deco(fn):
        SCHEDULES[name] = fn
        return fn

    return deco


@register_schedule("tanh")
def _tanh_schedule(num_stages: int, m: float = 0.06, tau: float = 3.5) -> list:
    """beta_t = m * tanh(t - tau) for t = 1..K (the paper: m=0.06, tau=3.5)."""
    return [m * math.tanh(t - tau) for t in range(1, num_stages + 1)]


@register_schedule("linear")
def _linear_schedule(num_stages: int, start: float = -0.06, end: float = 0.06) -> list:
    """Evenly spaced from ``start`` (first stage) to ``end`` (last stage)."""
    if num_stages == 1:
        return [float(start)]
    step = (end - start) / (num_stages - 1)
    return [start + step * i for i in range(num_stages)]


@register_schedule("list")
def _list_schedule(num_stages: int, betas: Sequence[float] = ()) -> list:
    """Explicit per-stage values."""
    if len(betas) != num_stages:
        raise ValueError(f"betas has {len(betas)} values but there are {num_stages} stages")
    return [float(b) for b in betas]


@register_schedule("none")
def _zero_schedule(num_stages: int) -> list:
    """Every beta 0: plain GRPO."""
    return [0.0] * num_stages


def stage_betas(schedule: str, num_stages: int, **params) -> list:
    """Per-stage entropy coefficients. Negative: entropy bonus; positive: penalty."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")
    if num_stages < 1:
        raise ValueError("num_stages must be >= 1")
    return SCHEDULES[schedule](num_stages, **params)


def stage_betas_from_config(algo, num_stages: int) -> list:
    """Map an ``AlgorithmConfig``-like object onto :func:`stage_betas` (plain attribute reads)."""
    params = {
        "tanh": {"m": algo.tanh_m, "tau": algo.tanh_tau},
        "linear": {"start": algo.linear_start, "end": algo.linear_end},
        "list": {"betas": list(algo.betas)},
        "none": {},
    }.get(algo.schedule, {})
    return stage_betas(algo.schedule, num_stages, **params)


# --------------------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4, scale_by_std: bool = True) -> Tensor:
    """(r - mean_g) / (std_g + eps) per group of ``group_size`` consecutive samples.

    ``std_g`` is the sample standard deviation (n - 1 denominator), as torch.std and
    TRL compute it. ``rewards``: ``[N]`` with N a multiple of ``group_size``. Returns ``[N]``.
    """
    if group_size < 2:
        raise ValueError("group_size must be >= 2")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} values, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


# --------------------------------------------------------------------------- log-probs, entropy


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _logprob_entropy_forward(logits: Tensor, targets: Tensor, temperature: float):
    """``(log_p [B, T, V], logprobs [B, T], entropy [B, T])`` of ``logits / temperature``, at least float32."""
    up = _at_least_float32(logits)
    log_p = up / temperature if temperature != 1.0 else up.clone()
    log_p.sub_(torch.logsumexp(log_p, dim=-1, keepdim=True))
    logprobs = torch.gather(log_p, -1, targets.long().unsqueeze(-1)).squeeze(-1)
    return log_p, logprobs, -(log_p.exp() * log_p).sum(dim=-1)


class _LogprobEntropy(torch.autograd.Function):
    """Log-prob of the targets and full-vocabulary entropy in one pass, with a hand-written backward.

    Autograd through ``log_softmax -> gather`` and ``-(exp(lp) * lp).sum`` keeps several
    ``[B, T, V]`` tensors alive and runs one backward kernel per op. Here only the
    log-probabilities are kept; with ``z = logits / T`` and ``p = softmax(z)``:

    * ``d logp_y / dz = onehot(y) - p``
    * ``d H / dz = -p * (log p + H)``

    When the entropy is not part of the loss (GRPO: every stage beta 0), its gradient is
    never computed.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float):
        ctx.set_materialize_grads(False)
        log_p, logprobs, entropy = _logprob_entropy_forward(logits, targets, temperature)
        ctx.save_for_backward(log_p, targets, entropy)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        return logprobs, entropy

    @staticmethod
    def backward(ctx, g_logprob: Optional[Tensor], g_entropy: Optional[Tensor]):
        log_p, targets, entropy = ctx.saved_tensors
        if g_logprob is None and g_entropy is None:
            return None, None, None
        p = log_p.exp()
        if g_entropy is not None:
            # -p * (log p + H) * g_H, built in the buffer of ``grad``
            grad = (log_p + entropy.unsqueeze(-1)).mul_(p).mul_(-g_entropy.unsqueeze(-1))
        else:
            grad = torch.zeros_like(p)
        if g_logprob is not None:
            g = g_logprob.unsqueeze(-1)
            grad.addcmul_(p, g, value=-1.0)
            grad.scatter_add_(-1, targets.long().unsqueeze(-1), g)
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad.to(ctx.logits_dtype), None, None


def token_logprobs_and_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0):
    """Per-token log-prob of ``targets`` and full-vocabulary entropy of ``logits / temperature``.

    ``logits``: ``[B, T, V]`` predicting ``targets`` ``[B, T]``. Returns two ``[B, T]``
    tensors in float32 (float64 for float64 logits). Both are differentiable (the CRPO stage term needs the entropy's
    gradient); the backward is fused (see ``_LogprobEntropy``).
    """
    if not (torch.is_grad_enabled() and logits.requires_grad):
        with torch.no_grad():
            return _logprob_entropy_forward(logits, targets, temperature)[1:]
    return _LogprobEntropy.apply(logits, targets, temperature)


# --------------------------------------------------------------------------- aggregation

AGGREGATIONS: Dict[str, Callable[..., Tensor]] = {}


def register_aggregation(name: str):
    def deco(fn):
        AGGREGATIONS[name] = fn
        return fn

    return deco


@register_aggregation("token_mean")
def _token_mean(per_token: Tensor, mask: Tensor, num_tokens=None, num_sequences=None, max_len=None) -> Tensor:
    """TRL's "bnpo": sum over every token of the batch / number of tokens."""
    denom = mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens
    return (per_token * mask).sum() / denom


@register_aggregation("seq_mean_token_mean")
def _seq_mean_token_mean(per_token: Tensor, mask: Tensor, num_tokens=None, num_sequences=None, max_len=None) -> Tensor:
    """TRL's "grpo": token mean within each sequence, then mean over sequences."""
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    denom = per_token.shape[0] if num_sequences is None else num_sequences
    return per_seq.sum() / denom


@register_aggregation("dr_grpo")
def _dr_grpo(per_token: Tensor, mask: Tensor, num_tokens=None, num_sequences=None, max_len=None) -> Tensor:
    """Dr. GRPO: sum over tokens / (sequences x maximum completion length)."""
    seqs = per_token.shape[0] if num_sequences is None else num_sequences
    length = per_token.shape[1] if max_len is None else max_len
    return (per_token * mask).sum() / (seqs * length)


# --------------------------------------------------------------------------- the loss


def stage_entropy_means(entropies: Tensor, stage_ids: Tensor, mask: Tensor, num_stages: int) -> tuple:
    """Per sample and stage, the mean entropy over that stage's tokens (0 where absent).

    Returns ``(means [B, K], counts [B, K])``.
    """
    valid = mask > 0
    onehot = (stage_ids.unsqueeze(-1) == torch.arange(num_stages, device=stage_ids.device)) & valid.unsqueeze(-1)
    weights = onehot.to(entropies.dtype)  # [B, T, K]
    counts = weights.sum(dim=1)  # [B, K]
    sums = (entropies.unsqueeze(-1) * weights).sum(dim=1)
    return sums / counts.clamp(min=1.0), counts


def crpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Optional[Tensor],
    entropies: Tensor,
    advantages: Tensor,
    stage_ids: Tensor,
    mask: Tensor,
    *,
    stage_betas: Sequence[float],
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_beta: float = 0.0,
    aggregation: str = "token_mean",
    num_tokens: Optional[float] = None,
    num_sequences: Optional[float] = None,
    max_completion_length: Optional[int] = None,
    behavior_logprobs: Optional[Tensor] = None,
    is_cap: float = 2.0,
    entropy_ceiling: float = 0.0,
):
    """The CRPO loss and its metrics.

    Args:
        logprobs: ``[B, T]`` current policy log-probs of the sampled tokens (with grad).
        old_logprobs: ``[B, T]`` log-probs of the policy that sampled them (no grad).
        ref_logprobs: ``[B, T]`` reference-model log-probs, or None (no KL term).
        entropies: ``[B, T]`` full-vocabulary entropy of the current policy (with grad).
        advantages: ``[B]`` group-normalized advantages.
        stage_ids: ``[B, T]`` int, stage index 0..K-1 of each token, -1 outside stages.
        mask: ``[B, T]`` 1 for completion tokens, 0 for padding.
        stage_betas: K coefficients; negative is an entropy bonus, positive a penalty.
        num_tokens, num_sequences: global normalizers when one batch is split into
            micro-batches or across ranks (default: this batch's own counts).
        max_completion_length: the ``dr_grpo`` length normalizer (default: T).
        behavior_logprobs: ``[B, T]`` log-probs of an older policy that actually sampled the
            tokens, when ``old_logprobs`` are the proximal policy's (decoupled PPO, Hilton et
            al. 2021): the clipped term is weighted per token by the truncated importance
            weight ``min(pi_old / pi_behavior, is_cap)``. None: ``old_logprobs`` sampled them.
        entropy_ceiling: when > 0, a stage's entropy bonus (beta < 0) acts on a sample only
            while that sample's mean entropy over the stage is below it (a hinge: the bonus
            stops pushing once the stage is that uncertain). Penalties (beta > 0) always act.
            0 turns the guard off (the paper's loss).

    Returns:
        ``(loss, metrics)``: a scalar tensor and a dict of detached 0-d tensors.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{aggregation}' (known: {', '.join(AGGREGATIONS)})")
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    per_token, ratio, is_weight = _clipped_pg_per_token(logprobs, old_logprobs, adv, clip_low, clip_high,
                                                        behavior_logprobs, is_cap)
    kl = _k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None and kl_beta != 0.0 else None
    if kl is not None:
        per_token = per_token + kl_beta * kl
    loss = AGGREGATIONS[aggregation](per_token, mask, num_tokens=num_tokens, num_sequences=num_sequences,
                                     max_len=max_completion_length)
    pg_only = loss

    entropy_term, guard, counts = _stage_entropy_term(entropies, stage_ids, mask, stage_betas, num_sequences,
                                                      entropy_ceiling)
    if any(b != 0.0 for b in stage_betas):
        loss = loss + entropy_term

    metrics = _loss_metrics(ratio, adv, mask, clip_low, clip_high, entropies, stage_ids, counts, len(stage_betas))
    metrics["pg_loss"] = pg_only.detach()
    metrics["entropy_term"] = entropy_term.detach()
    metrics["loss"] = loss.detach()
    metrics.update(_optional_metrics(mask, kl, guard, is_weight, is_cap))
    return loss, metrics


def _k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(d) - d - 1`` with ``d = ref - logprobs``."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def _optional_metrics(mask, kl, guard, is_weight, is_cap) -> dict:
    """Metrics of the terms that are on only in some configurations (KL, entropy guard, async)."""
    out = {}
    if kl is not None:
        out["kl"] = _masked_mean(kl, mask)
    if guard is not None:
        out["entropy_bonus_off_frac"] = guard
    if is_weight is not None:
        out["is_weight_mean"] = _masked_mean(is_weight, mask)
        out["is_weight_capped_frac"] = _masked_mean((is_weight > is_cap).to(mask.dtype), mask)
    return out


def _clipped_pg_per_token(logprobs, old_logprobs, adv, clip_low, clip_high, behavior_logprobs, is_cap):
    """PPO's clipped per-token term, times the truncated importance weight when a behavior
    policy sampled the tokens. Returns ``(per_token, ratio, is_weight or None)``."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    is_weight = None
    if behavior_logprobs is not None:
        is_weight = torch.exp(old_logprobs - behavior_logprobs).detach()
        per_token = per_token * is_weight.clamp(max=is_cap)
    return per_token, ratio, is_weight


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return ((values * mask).sum() / mask.sum().clamp(min=1.0)).detach()


def _stage_entropy_term(entropies: Tensor, stage_ids: Tensor, mask: Tensor, stage_betas: Sequence[float],
                        num_sequences: Optional[float], ceiling: float) -> tuple:
    """``sum_k beta_k * mean over samples of H_k``; with a ceiling, the fraction of present
    (sample, bonus-stage) pairs whose bonus the ceiling switched off (else None); the
    per-sample stage token counts ``[B, K]``."""
    means, counts = stage_entropy_means(entropies, stage_ids, mask, len(stage_betas))
    seq_denom = means.shape[0] if num_sequences is None else num_sequences
    term = torch.zeros((), dtype=means.dtype, device=means.device)
    off = torch.zeros((), dtype=means.dtype, device=means.device)
    present = torch.zeros((), dtype=means.dtype, device=means.device)
    for k, beta in enumerate(stage_betas):
        if beta == 0.0:
            continue
        stage = means[:, k]
        if beta < 0.0 and ceiling > 0.0:
            above = stage.detach() >= ceiling
            has = counts[:, k] > 0
            off = off + (above & has).sum()
            present = present + has.sum()
            stage = stage.masked_fill(above, 0.0)
        term = term + beta * (stage.sum() / seq_denom)
    guarded = ceiling > 0.0 and any(b < 0.0 for b in stage_betas)
    return term, ((off / present.clamp(min=1.0)).detach() if guarded else None), counts


def _loss_metrics(ratio, adv, mask, clip_low, clip_high, entropies, stage_ids, counts, num_stages) -> dict:
    with torch.no_grad():
        ntok = mask.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).to(mask.dtype)
        out = {
            "clip_frac_low": (low * mask).sum() / ntok,
            "clip_frac_high": (high * mask).sum() / ntok,
            "ratio_mean": (ratio * mask).sum() / ntok,
            "entropy_mean": (entropies.detach() * mask).sum() / ntok,
            "num_tokens": mask.sum(),
        }
        out["clip_frac"] = out["clip_frac_low"] + out["clip_frac_high"]
        ent = entropies.detach()
        for k in range(num_stages):
            sel = ((stage_ids == k) & (mask > 0)).to(ent.dtype)
            n = sel.sum()
            out[f"stage_entropy/{k}"] = (ent * sel).sum() / n.clamp(min=1.0)
            out[f"stage_tokens/{k}"] = n
            out[f"stage_present/{k}"] = (counts[:, k] > 0).to(ent.dtype).mean()
    return out
