"""The FSDP2 learner on Ray Train (gloo, CPU): 2 ranks match 1 rank; weight sync is bit for bit."""

import pytest
import ray
import ray.train
import torch
from transformers import AutoModelForCausalLM
from ray.train.torch import TorchConfig, TorchTrainer

from crpo_ray.algo import stage_betas
from crpo_ray.batching import make_batch, micro_batches
from crpo_ray.config import load_config
from crpo_ray.data import load_sources
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    ray.init(_node_ip_address="127.0.0.1", num_cpus=8, include_dashboard=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "PYTHONPATH": str(REPO / "tests")}})
    yield
    ray.shutdown()


def _batch(tokenizer, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt = tokenizer("<|im_start|>user\nI cannot sleep.<|im_end|>\n<think>\n<stimulus>", add_special_tokens=False)["input_ids"]
    prompts, responses, beh, sids = [], [], [], []
    for i in range(n):
        t = 5 + i % 4
        responses.append(torch.randint(3, len(tokenizer), (t,), generator=g).tolist())
        prompts.append(prompt[: len(prompt) - i % 3])
        beh.append((-torch.rand(t, generator=g) * 3).tolist())
        sids.append(torch.randint(-1, 5, (t,), generator=g).tolist())
    adv = torch.randn(n, generator=g).tolist()
    return make_batch(prompts, responses, beh, sids, adv, tokenizer.pad_token_id)


def _params():
    from crpo_ray.actors.learner import LossParams

    return LossParams(stage_betas("tanh", 5), 0.2, 0.2, 0.01, "token_mean", 0.85, 16, True)


def _rank_share(batch, rank, world):
    n = batch.size // world
    (share,) = micro_batches(micro_batches(batch, n)[rank], n)
    return share


def _one_update(config):
    from crpo_ray.actors.learner import full_state_dict, load_policy, train_step

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = load_policy(config["model_dir"])
    ref = load_policy(config["model_dir"], trainable=False)
    with torch.no_grad():  # move the policy off the reference so the KL term is not zero
        for p in model.parameters():
            p.add_(0.01)
    # SGD: the update is proportional to the gradient, so a wrong gradient scale across
    # ranks shows (Adam's first step is scale-invariant and would hide it).
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    m = train_step(model, ref, opt, sched, _rank_share(config["batch"], rank, world), _params(),
                   micro_batch_size=2, grad_clip=1.0)
    state = full_state_dict(model)
    if rank == 0:
        torch.save({"state": state, "metrics": {k: m[k] for k in ("loss", "kl", "entropy_term")}}, config["out"])


def _fit(fn, config, workers, tmp_path, name):
    """Run ``fn`` on ``workers`` ranks; rank 0 saves its results to ``config["out"]``."""
    trainer = TorchTrainer(fn, train_loop_config=config, torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=ray.train.RunConfig(name=name, storage_path=str(tmp_path)))
    trainer.fit()
    return torch.load(config["out"], weights_only=True)


def test_two_ranks_match_one(ray_session, tiny_model_dir, tiny_tokenizer, tmp_path):
    batch = _batch(tiny_tokenizer)
    results = {}
    for w in (1, 2):
        out = tmp_path / f"state{w}.pt"
        saved = _fit(_one_update, {"model_dir": str(tiny_model_dir), "batch": batch, "out": str(out)}, w,
                     tmp_path, f"upd{w}")
        results[w] = (saved["metrics"], saved["state"])
    (m1, s1), (m2, s2) = results[1], results[2]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert m1["kl"] > 0 and m1["entropy_term"] != 0
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    for k in s1:
        # the update itself (after - before) agrees within 1e-5 relative
        d1, d2 = s1[k] - initial[k] - 0.01, s2[k] - initial[k] - 0.01
        assert (s2[k] - s1[k]).norm() <= 1e-5 * s1[k].norm(), k
        assert (d2 - d1).norm() <= 1e-5 * d1.norm() + 1e-9, (k, (d2 - d1).norm().item(), d1.norm().item())
    assert sum((s1[k] - initial[k] - 0.01).abs().sum().item() for k in s1) > 0


def _sync_check(config):
    from crpo_ray.actors.learner import full_state_dict, load_policy, train_step
    from crpo_ray.actors.train_loop import _Publisher

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = load_policy(config["model_dir"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_step(model, None, opt, sched, _rank_share(config["batch"], rank, world), _params(),
               micro_batch_size=4, grad_clip=0.0)
    _Publisher(config["fleet"], rank)(model, 5)
    state = full_state_dict(model)
    if rank == 0:
        worker_states = ray.get(config["fleet"].worker_state_dicts.remote())
        equal = all(torch.equal(ws[k], state[k]) for ws in worker_states for k in ws)
        missing = [k for ws in worker_states for k in ws if k not in state]
        result = {"equal": int(equal and not missing), "compared": sum(len(ws) for ws in worker_states),
                  "versions": min(ray.get(config["fleet"].versions.remote()))}
        torch.save(result, config["out"])


def test_sync_is_bit_for_bit(ray_session, tiny_model_dir, tiny_tokenizer, tmp_path):
    from crpo_ray.actors.fleet import FleetActor

    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", ["rollout.num_workers=2"])
    train, _ = load_sources(cfg.data.train)
    fleet = FleetActor.options(num_cpus=0).remote(cfg, str(tiny_model_dir), train, train.slice(0, 0), 1)
    metrics = _fit(_sync_check, {"model_dir": str(tiny_model_dir), "batch": _batch(tiny_tokenizer), "fleet": fleet,
                                 "out": str(tmp_path / "sync.pt")}, 2, tmp_path, "sync")
    n_keys = len(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    assert metrics["equal"] == 1 and metrics["compared"] == 2 * n_keys and metrics["versions"] == 5
    # and the weights did move away from the initial ones
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = ray.get(fleet.worker_state_dicts.remote())[0]
    assert any(not torch.equal(initial[k], after[k]) for k in initial)
    ray.kill(fleet)
