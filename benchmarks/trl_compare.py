"""(4) crpo-ray against TRL's GRPOTrainer on this CPU machine.

Both train the same random-weight model directory on the same rendered prompts (the
prompts crpo-ray uses at steps 0..N-1, in order), with the same group size, prompts per
step, completion length, learning rate, sampling, clipping, loss aggregation and
reward (crpo_ray.rewards.score_completion: format + accuracy, weight 1). TRL runs in
its own process (``python -m benchmarks.trl_compare SPEC OUT``) so its imports and
thread settings do not touch the suite's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import REPO, median, verdict

TARGET_SYNC = 3.0

UNMATCHED = [
    "threads: TRL runs one process with torch threads = all cores; crpo-ray's sync mode gives its one rollout "
    "and one learner actor all cores each (they take turns), its async mode cores // 2 each (they run at once)",
    "prompt order within a step: crpo-ray's sampler vs TRL's RepeatSampler over the same prompt list "
    "(shuffle_dataset=False); the same prompts appear in the same steps",
    "generation: crpo-ray's HF engine also returns per-token logits (for log-probs and stage entropies); TRL "
    "recomputes old log-probs only when needed",
    "objective: crpo-ray runs algorithm.name=grpo (no stage-entropy term) so both optimize GRPO; "
    "TRL loss_type=dapo ~ crpo-ray token_mean",
    "random seeds: sampled completions differ, so completion lengths can differ (reported)",
    "learner: crpo-ray shards with FSDP2 (1 worker, gloo); TRL trains a plain module through accelerate",
]


def trl_worker(spec: dict) -> dict:
    """Runs in the child process: TRL GRPOTrainer, timed per step and per phase."""
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from crpo_ray.rewards import score_completion

    prof = {"generate": [], "reward": [], "gen_and_score": []}
    stage_names = spec["stage_names"]

    def reward(completions, label, **_):
        t = time.perf_counter()
        out = [score_completion(c, g, stage_names, format_value=0.5, prefilled=True).total
               for c, g in zip(completions, label)]
        prof["reward"].append(time.perf_counter() - t)
        return out

    class Steps(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    tok = AutoTokenizer.from_pretrained(spec["model"], trust_remote_code=False)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, trust_remote_code=False)
    data = Dataset.from_dict({"prompt": spec["prompts"], "label": spec["labels"]})
    n = spec["prompts_per_step"] * spec["group_size"]
    args = GRPOConfig(
        output_dir=spec["work"], per_device_train_batch_size=n, gradient_accumulation_steps=1,
        num_generations=spec["group_size"], max_completion_length=spec["max_new_tokens"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, max_steps=spec["steps"],
        temperature=spec["temperature"], top_p=spec["top_p"], top_k=0, beta=0.0, epsilon=0.2, num_iterations=1,
        loss_type="dapo", scale_rewards="group", max_grad_norm=spec["grad_clip"], weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, use_cpu=True, bf16=False, fp16=False, report_to="none",
        save_strategy="no", logging_steps=1, shuffle_dataset=False, seed=spec["seed"], use_vllm=False,
        dataloader_num_workers=0, log_completions=False, disable_tqdm=True)
    steps = Steps()
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok,
                          callbacks=[steps])
    inner_generate = trainer.model.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = inner_generate(*a, **k)
        prof["generate"].append(time.perf_counter() - t)
        prof.setdefault("completion_len", []).append(int(out.shape[1] - k["input_ids"].shape[1]))
        return out

    trainer.model.generate = timed_generate
    inner_gas = trainer._generate_and_score_completions

    def timed_gas(*a, **k):
        t = time.perf_counter()
        out = inner_gas(*a, **k)
        prof["gen_and_score"].append(time.perf_counter() - t)
        return out

    trainer._generate_and_score_completions = timed_gas
    t0 = time.perf_counter()
    trainer.train()
    return {"step_times": steps.times, "wall_s": time.perf_counter() - t0, "profile": prof,
            "threads": torch.get_num_threads()}


def run(crpo_row: dict, cfg, work: Path, threads: int, crpo_async: Optional[dict] = None) -> dict:
    """``crpo_row``: the overhead benchmark's row for the same config (crpo-ray sync mode);
    ``crpo_async``: :func:`benchmarks.overhead.run_crpo` of the same config in async mode."""
    from benchmarks.overhead import step_prompts

    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "trl is not installed (pip install -e '.[bench]')"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    steps = crpo_row["crpo"]["steps"]
    prompts, labels = [], []
    from crpo_ray.actors.driver import check_inputs
    from crpo_ray.sampler import step_indices

    _, _, train, _, _ = check_inputs(cfg)
    for s in range(steps):
        prompts += [tok.decode(ids) for ids in step_prompts(cfg, s)]
        labels += [train["label"][r].as_py() for r in step_indices(s, cfg.rollout.prompts_per_step, train.num_rows,
                                                                   cfg.data.shuffle_seed)]
    spec = {"model": cfg.model.path, "prompts": prompts, "labels": labels, "steps": steps,
            "prompts_per_step": cfg.rollout.prompts_per_step, "group_size": cfg.rollout.group_size,
            "max_new_tokens": cfg.rollout.max_new_tokens, "lr": cfg.learner.lr, "temperature": cfg.rollout.temperature,
            "top_p": cfg.rollout.top_p, "grad_clip": cfg.learner.grad_clip, "seed": cfg.run.seed,
            "threads": threads, "stage_names": list(cfg.stage_names), "work": str(work / "trl")}
    spec_path, out_path = work / "trl_spec.json", work / "trl_out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.trl_compare", str(spec_path), str(out_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"TRL run failed: {tail[0][:300]}"}
    res = json.loads(out_path.read_text())
    return summarize(res, crpo_row, spec, crpo_async)


def summarize(res: dict, crpo_row: dict, spec: dict, crpo_async: Optional[dict] = None) -> dict:
    samples = spec["prompts_per_step"] * spec["group_size"]
    measured = res["step_times"][1:] if len(res["step_times"]) > 1 else res["step_times"]
    trl_step = median(measured)
    prof = res["profile"]
    skip = 1 if len(prof["generate"]) > 1 else 0
    gen, gas = median(prof["generate"][skip:]), median(prof["gen_and_score"][skip:])
    rew = median(prof["reward"][skip:])
    trl = {"step_s": trl_step, "samples_per_s": samples / trl_step, "threads": res["threads"],
           "completion_len": median([float(x) for x in prof.get("completion_len", [])[skip:]]),
           "phases_s": {"generate": gen, "reward": rew, "logprobs_and_other_prep": gas - gen - rew,
                        "train (forward, backward, optimizer) and other": trl_step - gas},
           "steps": len(res["step_times"]), "wall_s": res["wall_s"]}
    crpo = crpo_row["crpo"]
    ratio = crpo["samples_per_s"] / trl["samples_per_s"]
    out = {"model": crpo_row["model"], "params": crpo_row["params"], "samples_per_step": samples,
           "steps": spec["steps"], "max_new_tokens": spec["max_new_tokens"], "lr": spec["lr"],
           "trl": trl, "crpo_sync": _crpo_side(crpo),
           "ratio_sync": ratio, "target_sync": TARGET_SYNC, "verdict_sync": verdict(ratio, TARGET_SYNC, True),
           "unmatched": UNMATCHED}
    if crpo_async is None:
        out["async"] = "not measured"
    else:  # the target for async is "more than sync": above the sync ratio and at least the sync target
        out["crpo_async"] = _crpo_side(crpo_async)
        out["ratio_async"] = crpo_async["samples_per_s"] / trl["samples_per_s"]
        out["verdict_async"] = verdict(out["ratio_async"], max(TARGET_SYNC, ratio), True)
    return out


def _crpo_side(crpo: dict) -> dict:
    return {"step_s": crpo["step_s"], "samples_per_s": crpo["samples_per_s"], "threads_per_actor":
            crpo.get("threads_per_actor"), "completion_len": crpo["response_len"], "phases_s": crpo["phases_s"]}


if __name__ == "__main__":
    out = trl_worker(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(out))
