"""CRPO math against values worked out by hand (in the comments)."""

import math

import pytest
import torch

from crpo_ray.algo import (
    AGGREGATIONS, crpo_loss, group_advantages, stage_betas, stage_entropy_means, token_logprobs_and_entropy,
)


def _loss(lp, old, adv, mask=None, **kw):
    b, t = lp.shape
    mask = torch.ones(b, t) if mask is None else mask
    ent = torch.zeros(b, t)
    sid = torch.full((b, t), -1)
    kw.setdefault("stage_betas", [0.0])
    return crpo_loss(lp, old, kw.pop("ref", None), ent, adv, sid, mask, **kw)


def test_group_advantages_by_hand():
    # group 1: [1, 0, 0, 0]: mean 0.25, sample std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    # group 2: [2, 2, 2, 2]: std 0, so every advantage is 0 / (0 + eps) = 0
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4, eps=1e-4)
    expected = torch.tensor([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0])
    assert torch.allclose(adv, expected, atol=1e-7)
    assert torch.allclose(group_advantages(r, 4, scale_by_std=False), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    # groups are consecutive: G=2 over [1, 3, 5, 5] -> [-1, 1] / (sqrt(2) + eps), [0, 0]
    adv2 = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2)
    s = math.sqrt(2) + 1e-4
    assert torch.allclose(adv2, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-7)


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 1)


@pytest.mark.parametrize(
    "adv, ratio, loss, low, high",
    [
        # A=+1, ratio 1.5 -> min(1.5, clip 1.2) = 1.2 -> loss -1.2, clipped high
        (1.0, 1.5, -1.2, 0.0, 1.0),
        # A=-1, ratio 0.5 -> min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped low
        (-1.0, 0.5, 0.8, 1.0, 0.0),
        # A=-1, ratio 1.5 -> min(-1.5, -1.2) = -1.5 -> loss 1.5, not clipped (pessimistic side)
        (-1.0, 1.5, 1.5, 0.0, 0.0),
        # A=+1, ratio 0.5 -> min(0.5, 0.8) = 0.5 -> loss -0.5, not clipped
        (1.0, 0.5, -0.5, 0.0, 0.0),
        # A=+2, ratio 1.1 inside the range -> loss -2.2
        (2.0, 1.1, -2.2, 0.0, 0.0),
    ],
)
def test_clipping_both_sides(adv, ratio, loss, low, high):
    lp = torch.tensor([[math.log(ratio)]])
    out, m = _loss(lp, torch.zeros(1, 1), torch.tensor([adv]))
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert m["clip_frac_low"].item() == low and m["clip_frac_high"].item() == high


def test_asymmetric_clip():
    # clip_high 0.28: ratio 1.5 with A=+1 -> min(1.5, 1.28) = 1.28
    out, _ = _loss(torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1), torch.tensor([1.0]), clip_high=0.28)
    assert out.item() == pytest.approx(-1.28, abs=1e-6)


def test_decoupled_importance_weight_by_hand():
    # Two tokens, A = +1, proximal = current (ratio 1, so the clipped term is -1 per token).
    # Token 1: pi_old / pi_behavior = 1.5 -> weight 1.5. Token 2: 3.0 -> capped at 2.0.
    # token_mean loss: -(1.5 + 2.0) / 2 = -1.75; gradient per token = -weight / 2.
    lp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)
    behavior = torch.tensor([[-math.log(1.5), -math.log(3.0)]])
    out, m = _loss(lp, old, torch.tensor([1.0]), behavior_logprobs=behavior, is_cap=2.0)
    assert out.item() == pytest.approx(-1.75, abs=1e-6)
    out.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.75, -1.0]]), atol=1e-6)
    assert m["is_weight_mean"].item() == pytest.approx(2.25, abs=1e-6)
    assert m["is_weight_capped_frac"].item() == pytest.approx(0.5)
    # Behavior equal to the proximal policy: exactly the on-policy loss.
    plain, _ = _loss(torch.tensor([[0.1, -0.2]]), old, torch.tensor([1.0]))
    same, _ = _loss(torch.tensor([[0.1, -0.2]]), old, torch.tensor([1.0]), behavior_logprobs=old)
    assert same.item() == pytest.approx(plain.item(), abs=1e-7)


def test_k3_kl_by_hand():
    # lp = old = 0, ref = log 2: delta = log 2, kl = 2 - log 2 - 1 = 0.306853; A = 0
    lp = torch.zeros(1, 1)
    ref = torch.tensor([[math.log(2.0)]])
    out, m = _loss(lp, lp, torch.tensor([0.0]), ref=ref, kl_beta=0.1)
    assert m["kl"].item() == pytest.approx(2 - math.log(2) - 1, abs=1e-6)
    assert out.item() == pytest.approx(0.1 * (2 - math.log(2) - 1), abs=1e-6)
    # kl_beta 0 or no reference: no KL term
    out0, m0 = _loss(lp, lp, torch.tensor([0.0]), ref=ref, kl_beta=0.0)
    assert out0.item() == 0.0 and "kl" not in m0


def test_every_aggregation_by_hand():
    # ratio 1 everywhere so per-token loss = -A: rows [-1, -1, pad], [3, pad, pad]
    lp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -3.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = {
        "token_mean": (-1 - 1 + 3) / 3,  # all tokens of the batch
        "seq_mean_token_mean": (-1 + 3) / 2,  # per-sequence means, then their mean
        "dr_grpo": (-1 - 1 + 3) / (2 * 3),  # / (B * T)
    }
    assert set(expected) == set(AGGREGATIONS)
    for name, value in expected.items():
        out, _ = _loss(lp, lp, adv, mask, aggregation=name)
        assert out.item() == pytest.approx(value, abs=1e-7), name
    out, _ = _loss(lp, lp, adv, mask, aggregation="dr_grpo", max_completion_length=10)
    assert out.item() == pytest.approx(1 / 20, abs=1e-7)
    # global normalizers (micro-batching): token_mean over 6 tokens of the whole batch
    out, _ = _loss(lp, lp, adv, mask, aggregation="token_mean", num_tokens=6.0)
    assert out.item() == pytest.approx(1 / 6, abs=1e-7)
    with pytest.raises(ValueError):
        _loss(lp, lp, adv, mask, aggregation="nope")


def test_tanh_schedule_matches_paper():
    betas = stage_betas("tanh", 5, m=0.06, tau=3.5)
    assert [round(b, 4) for b in betas] == [-0.0592, -0.0543, -0.0277, 0.0277, 0.0543]


def test_other_schedules():
    assert stage_betas("linear", 3, start=-0.1, end=0.1) == pytest.approx([-0.1, 0.0, 0.1])
    assert stage_betas("list", 2, betas=[0.5, -0.5]) == [0.5, -0.5]
    assert stage_betas("none", 4) == [0.0] * 4
    with pytest.raises(ValueError):
        stage_betas("list", 3, betas=[0.1])
    with pytest.raises(ValueError):
        stage_betas("cosine", 3)


def test_stage_entropy_term_by_hand():
    # entropies [[1,2,3],[4,5,6]], stages [[0,0,1],[1,-1,-1]], mask drops the last token of row 2
    # stage 0: row means 1.5 and 0 (absent) -> mean 0.75; stage 1: 3 and 4 -> 3.5
    # term = 0.1 * 0.75 + (-0.2) * 3.5 = -0.625
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    sid = torch.tensor([[0, 0, 1], [1, -1, -1]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    lp = torch.zeros(2, 3)
    out, m = crpo_loss(lp, lp, None, ent, torch.zeros(2), sid, mask, stage_betas=[0.1, -0.2])
    assert out.item() == pytest.approx(-0.625, abs=1e-6)
    assert m["entropy_term"].item() == pytest.approx(-0.625, abs=1e-6)
    assert m["stage_entropy/0"].item() == pytest.approx(1.5) and m["stage_tokens/0"].item() == 2
    assert m["stage_entropy/1"].item() == pytest.approx(3.5) and m["stage_tokens/1"].item() == 2


def test_entropy_ceiling_by_hand():
    # same batch as above, stage 0 a penalty (0.1), stage 1 a bonus (-0.2), ceiling 3.5:
    # stage 1 row means 3 (below: kept) and 4 (at or above: bonus off) -> (3 + 0) / 2 = 1.5
    # term = 0.1 * 0.75 + (-0.2) * 1.5 = -0.225; one of the two present bonus pairs is off
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    sid = torch.tensor([[0, 0, 1], [1, -1, -1]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    lp = torch.zeros(2, 3)
    out, m = crpo_loss(lp, lp, None, ent, torch.zeros(2), sid, mask, stage_betas=[0.1, -0.2], entropy_ceiling=3.5)
    assert out.item() == pytest.approx(-0.225, abs=1e-6)
    assert m["entropy_bonus_off_frac"].item() == pytest.approx(0.5)
    (g,) = torch.autograd.grad(out, ent)
    # the guarded bonus token gets no gradient; the penalty stage always does
    assert g[1, 0].item() == 0.0 and g[0, 2].item() == pytest.approx(-0.2 / 2)
    assert g[0, 0].item() == pytest.approx(0.1 / 2 / 2) and g[0, 1].item() == pytest.approx(0.1 / 2 / 2)
    # ceiling 0 is the paper's loss: no guard metric, the same value as without the argument
    off, m0 = crpo_loss(lp, lp, None, ent, torch.zeros(2), sid, mask, stage_betas=[0.1, -0.2])
    assert off.item() == pytest.approx(-0.625, abs=1e-6) and "entropy_bonus_off_frac" not in m0


def test_stage_means_loop_equals_vectorized():
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(6, 11, generator=g)
    sid = torch.randint(-1, 4, (6, 11), generator=g)
    mask = (torch.rand(6, 11, generator=g) > 0.2).float()
    means, counts = stage_entropy_means(ent, sid, mask, 4)
    for b in range(6):
        for k in range(4):
            sel = [ent[b, t].item() for t in range(11) if sid[b, t] == k and mask[b, t] > 0]
            assert counts[b, k].item() == len(sel)
            assert means[b, k].item() == pytest.approx(sum(sel) / len(sel) if sel else 0.0, abs=1e-6)


def _grpo_reference(lp, old, ref, adv, mask, clip, kl_beta):
    """TRL 0.21's GRPO loss ("bnpo"), written out independently."""
    coef1 = torch.exp(lp - old)
    coef2 = torch.clamp(coef1, 1 - clip, 1 + clip)
    loss = -torch.min(coef1 * adv[:, None], coef2 * adv[:, None])
    loss = loss + kl_beta * (torch.exp(ref - lp) - (ref - lp) - 1)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def test_zero_betas_is_exactly_grpo():
    g = torch.Generator().manual_seed(1)
    lp = (torch.randn(8, 7, generator=g) * 0.3 - 1).requires_grad_()
    old = lp.detach() + torch.randn(8, 7, generator=g) * 0.2
    ref = lp.detach() + torch.randn(8, 7, generator=g) * 0.2
    ent = torch.rand(8, 7, generator=g, requires_grad=True)
    adv = torch.randn(8, generator=g)
    sid = torch.randint(-1, 5, (8, 7), generator=g)
    mask = (torch.rand(8, 7, generator=g) > 0.3).float()
    ours, _ = crpo_loss(lp, old, ref, ent, adv, sid, mask, stage_betas=[0.0] * 5, kl_beta=0.01)
    theirs = _grpo_reference(lp, old, ref, adv, mask, 0.2, 0.01)
    assert torch.equal(ours, theirs)
    (g1,) = torch.autograd.grad(ours, lp)
    (g2,) = torch.autograd.grad(theirs, lp)
    assert torch.equal(g1, g2)
    crpo, _ = crpo_loss(lp, old, ref, ent, adv, sid, mask, stage_betas=stage_betas("tanh", 5), kl_beta=0.01)
    assert not torch.equal(crpo, theirs)


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]]])
    lp, ent = token_logprobs_and_entropy(logits, torch.tensor([[2, 0]]))
    assert lp[0, 0].item() == pytest.approx(math.log(0.25)) and ent[0, 0].item() == pytest.approx(math.log(4))
    p = torch.softmax(logits[0, 1], -1)
    assert ent[0, 1].item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    # temperature scales the logits first: at T=2 the second row is softmax([5, 0, 0, 0])
    lp2, _ = token_logprobs_and_entropy(logits, torch.tensor([[2, 0]]), temperature=2.0)
    assert lp2[0, 1].item() == pytest.approx(float(torch.log_softmax(logits[0, 1] / 2, -1)[0]), abs=1e-6)


def _autograd_logprob_entropy(logits, targets, temperature):
    log_p = torch.log_softmax(logits / temperature, -1)
    return log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("use_entropy", [True, False])
def test_fused_backward_matches_autograd(temperature, use_entropy):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    w_lp, w_ent = torch.randn(3, 5, dtype=torch.float64, generator=g), torch.randn(3, 5, dtype=torch.float64, generator=g)
    grads = []
    for fn in (token_logprobs_and_entropy, _autograd_logprob_entropy):
        lp, ent = fn(logits, targets, temperature)
        loss = (lp * w_lp).sum() + ((ent * w_ent).sum() if use_entropy else 0.0)
        grads.append(torch.autograd.grad(loss, logits)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)
    # and against finite differences
    assert torch.autograd.gradcheck(lambda x: token_logprobs_and_entropy(x, targets, temperature), (logits,))


def test_fused_keeps_low_precision_logits_dtype_for_the_gradient():
    logits = torch.randn(2, 3, 7, dtype=torch.bfloat16, requires_grad=True)
    lp, ent = token_logprobs_and_entropy(logits, torch.zeros(2, 3, dtype=torch.long))
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    (lp.sum() + ent.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def _toy_step(betas, adv, lr):
    """One SGD step on a toy policy with independent logits per position; returns per-stage entropy."""
    torch.manual_seed(0)
    T, V = 10, 8
    logits = torch.randn(T, V).requires_grad_()
    targets = torch.randint(0, V, (1, T))
    sid = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]])
    mask = torch.ones(1, T)

    def per_stage_entropy():
        with torch.no_grad():
            _, ent = token_logprobs_and_entropy(logits[None], targets)
            return [ent[0, 2 * k:2 * k + 2].mean().item() for k in range(5)]

    before = per_stage_entropy()
    lp, ent = token_logprobs_and_entropy(logits[None], targets)
    loss, _ = crpo_loss(lp, lp.detach(), None, ent, torch.tensor([adv]), sid, mask, stage_betas=betas)
    loss.backward()
    with torch.no_grad():
        logits -= lr * logits.grad
    return before, per_stage_entropy()


def test_one_step_moves_stage_entropy_by_sign_of_beta():
    betas = stage_betas("tanh", 5)
    # no advantage signal: only the stage term acts
    before, after = _toy_step(betas, 0.0, lr=1.0)
    for k, b in enumerate(betas):
        assert (after[k] > before[k]) if b < 0 else (after[k] < before[k]), (k, b, before[k], after[k])
    # with a policy-gradient signal, against the same step with every beta 0
    _, grpo = _toy_step([0.0] * 5, 1.0, lr=0.5)
    _, crpo = _toy_step(betas, 1.0, lr=0.5)
    for k, b in enumerate(betas):
        assert (crpo[k] > grpo[k]) if b < 0 else (crpo[k] < grpo[k]), (k, b, grpo[k], crpo[k])
