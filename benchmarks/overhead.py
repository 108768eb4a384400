"""(2) Orchestration overhead and the bare-compute floor.

A real crpo-ray training (embedded Ray, FleetActor, RolloutActor, ScorerActor, FSDP2
learner under Ray Train) on a random-weight model; its ``metrics.jsonl`` gives each
step's wall time and the time inside generate, score, train and sync. Step 0 is a
warm-up and is skipped. The floor runs in this process without Ray, with the thread
count each crpo-ray actor gets: one plain HF ``generate`` of the same prompts and group
size, then one plain forward, backward and AdamW step over the same number of
sequences of the same lengths.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List

from benchmarks.common import REPO, best_of, count_params, median, model_dir, verdict

OVERHEAD_TARGET = 0.05
FLOOR_TARGET = 1.2
PHASES = ("time_generate", "time_score", "time_train", "time_sync")


def bench_config(size: str, name: str, out_dir: Path, steps: int, max_new_tokens: int, algorithm: str = "crpo",
                 prompts: int = 4, group: int = 4, mode: str = "sync"):
    from crpo_ray.config import load_config

    return load_config(REPO / "configs" / "tiny-cpu.yaml", [
        f"model.path={model_dir(size)}", f"run.name={name}", f"run.output_dir={out_dir}", f"run.total_steps={steps}",
        "run.eval_max_examples=1", "learner.num_workers=1", "rollout.num_workers=1", "algorithm.kl_beta=0.0",
        f"algorithm.name={algorithm}", f"algorithm.schedule={'none' if algorithm == 'grpo' else 'tanh'}",
        "reward.balanced=false", f"rollout.max_new_tokens={max_new_tokens}",
        f"rollout.prompts_per_step={prompts}", f"rollout.group_size={group}", "logging.progress=false",
        "logging.tensorboard=false", f"learner.micro_batch_size={prompts * group}", "checkpoint.keep_last=1",
        f"cluster.mode={mode}"])


def actor_threads(cfg) -> int:
    """What the driver gives each rollout worker (the learner gets the same with one learner worker)."""
    from crpo_ray.actors.driver import actor_threads as driver_threads

    return driver_threads(cfg)[1]


def run_crpo(cfg) -> dict:
    from crpo_ray.actors.driver import run_training

    start = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - start
    steps = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    measured = steps[1:] if len(steps) > 1 else steps
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    frac = [s["time_overhead"] / s["time_step"] for s in measured]
    # the step without the end-of-run eval (the last step's time_step includes it; the floor has none)
    step_s = median([s["time_step"] - (s.get("time_eval") or 0.0) for s in measured])
    out = {"steps": len(steps), "measured_steps": len(measured), "wall_s": wall, "samples_per_step": samples,
           "step_s": step_s,
           "overhead_fraction": median(frac), "overhead_fraction_max": max(frac),
           "response_len": median([s["response_len"] for s in measured]),
           "samples_per_s": samples / step_s,
           "threads_per_actor": actor_threads(cfg),
           "phases_s": {k: median([s.get(k, 0.0) for s in measured]) for k in
                        PHASES + ("time_prepare", "time_wait_batch", "time_eval", "time_overhead",
                                  "sync_gather_s", "sync_put_s", "sync_load_s")},
           "timeline": [{k: s.get(k) for k in ("step", "ts_step_start", "ts_produce_start", "time_prepare",
                                               "time_generate", "time_score", "time_wait_batch", "time_train",
                                               "time_sync", "sync_gather_s", "sync_put_s", "sync_load_s",
                                               "time_eval", "time_step")} for s in steps]}
    out["verdict_overhead"] = verdict(out["overhead_fraction"], OVERHEAD_TARGET)
    return out


def step_prompts(cfg, step: int) -> List[List[int]]:
    """The token ids of the prompts crpo-ray uses at ``step`` (same rendering as the fleet)."""
    from crpo_ray.actors.driver import check_inputs
    from crpo_ray.prompts import render_prompt, resolve_system_prompt
    from crpo_ray.sampler import step_indices

    _, tok, train, _, _ = check_inputs(cfg)
    system = resolve_system_prompt(cfg.prompt.system_prompt, [(s.name, s.description) for s in cfg.prompt.stages])
    rows = step_indices(step, cfg.rollout.prompts_per_step, train.num_rows, cfg.data.shuffle_seed)
    return [render_prompt(tok, train["instruction"][r].as_py(), train["text"][r].as_py(), system_prompt=system,
                          stage_names=cfg.stage_names, max_prompt_tokens=cfg.prompt.max_prompt_tokens,
                          prefill=cfg.prompt.prefill).token_ids for r in rows]


def bare_floor(cfg, threads: int, repeats: int = 2) -> dict:
    """Plain generate + plain forward/backward/AdamW step, one process, no Ray, ``threads`` threads."""
    import torch

    from crpo_ray.engines import HFEngine

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # one float32 model: plain generate and the train step use it directly, and crpo-ray's own
        # engine is timed around it
        engine = HFEngine(str(model_dir_of(cfg)))
        tok, model = engine.tokenizer, engine.model
        prompts = step_prompts(cfg, 1)
        g, pad = cfg.rollout.group_size, tok.pad_token_id
        rows = [p for p in prompts for _ in range(g)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):], attn[i, width - len(r):] = torch.tensor(r), 1
        seqs = {}

        def generate():
            model.eval()
            with torch.no_grad():
                seqs["out"] = model.generate(input_ids=ids, attention_mask=attn, do_sample=True,
                                             temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=None,
                                             max_new_tokens=cfg.rollout.max_new_tokens, pad_token_id=pad)

        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr)

        def train():
            model.train()
            full = seqs["out"]
            mask = torch.cat([attn, torch.ones_like(full[:, width:])], dim=1)
            logits = model(input_ids=full, attention_mask=mask).logits[:, width - 1:-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, full[:, width:, None]).squeeze(-1)
            adv = torch.randn(lp.shape[0], 1)
            (-(lp * adv).mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        generate(), train()  # warm-up
        gen_s = best_of(generate, repeats)
        train_s = best_of(train, repeats)
        engine_s = _engine_generate_s(engine, cfg, prompts, repeats)
        return {"threads": threads, "generate_s": gen_s, "train_s": train_s, "floor_s": gen_s + train_s,
                "engine_generate_s": engine_s,
                "sequences": len(rows), "completion_len": int(seqs["out"].shape[1] - width), "prompt_width": width}
    finally:
        torch.set_num_threads(old_threads)


def _engine_generate_s(engine, cfg, prompts, repeats: int) -> float:
    """crpo-ray's own HF engine (log-probs and entropies included) in this process, same threads:
    separates the engine's extra work from what running inside Ray actors costs."""
    engine.model.eval()
    r = cfg.rollout

    def gen():
        engine.generate(prompts, r.group_size, temperature=r.temperature, top_p=r.top_p,
                        max_new_tokens=r.max_new_tokens)

    gen()  # warm-up
    return best_of(gen, repeats)


def model_dir_of(cfg) -> Path:
    return Path(cfg.model.path)


def run(sizes: List[tuple], work: Path, steps: int) -> dict:
    """``sizes``: (label, model size, max_new_tokens, algorithm)."""
    rows = []
    for label, size, new_tokens, algo in sizes:
        cfg = bench_config(size, f"overhead-{label}-{int(time.time())}", work, steps, new_tokens, algo)
        crpo = run_crpo(cfg)
        floor = bare_floor(cfg, crpo["threads_per_actor"])
        ratio = crpo["step_s"] / floor["floor_s"]
        rows.append({"config": label, "model": size, "params": count_params(model_dir(size)), "algorithm": algo,
                     "prompts_per_step": cfg.rollout.prompts_per_step, "group_size": cfg.rollout.group_size,
                     "max_new_tokens": new_tokens, "crpo": crpo, "floor": floor, "step_over_floor": ratio,
                     "verdict_floor": verdict(ratio, FLOOR_TARGET)})
        print(f"[bench] overhead {label}: step {crpo['step_s']:.2f}s overhead {crpo['overhead_fraction']:.1%} "
              f"floor {floor['floor_s']:.2f}s ratio {ratio:.2f}", flush=True)
    return {"targets": {"overhead_fraction": OVERHEAD_TARGET, "step_over_floor_sync": FLOOR_TARGET},
            "mode": "sync", "rows": rows}
