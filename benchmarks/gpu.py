"""(7) GPU mode: the vllm engine on GPUs; generated tokens/s per GPU and learner MFU.

Runs only where CUDA and vLLM are present; elsewhere it records why it was skipped
(not a failure). Untested in CI (no GPU there). MFU counts 6 x params x trained
completion tokens per second over the learner GPUs' peak bf16 FLOP/s (prompt tokens
are not counted, so it is a lower bound); set CRPO_BENCH_PEAK_TFLOPS for an unknown GPU.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from benchmarks.common import count_params, gpu_name, median, model_dir

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops() -> float:
    if os.environ.get("CRPO_BENCH_PEAK_TFLOPS"):
        return float(os.environ["CRPO_BENCH_PEAK_TFLOPS"])
    name = gpu_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))


def run(work: Path, size: str = "500m", steps: int = 4) -> dict:
    import torch

    if not torch.cuda.is_available():
        print("[bench] gpu: skipped: no GPU", flush=True)
        return {"skipped": "no GPU"}
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "no vllm (pip install -e '.[vllm]')"}
    from crpo_ray.config import load_config

    from benchmarks.overhead import REPO, run_crpo

    n_gpus = torch.cuda.device_count()
    learners = max(1, n_gpus - 1)
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", [
        f"model.path={model_dir(size)}", f"run.name=gpu-{size}-{os.getpid()}", f"run.output_dir={work}",
        f"run.total_steps={steps}", "run.eval_max_examples=1", "rollout.engine=vllm", "rollout.num_workers=1",
        "rollout.prompts_per_step=32", "rollout.group_size=8", "rollout.max_new_tokens=512",
        "learner.use_gpu=true", "learner.bf16=true", f"learner.num_workers={learners}", "learner.backend=nccl",
        "algorithm.kl_beta=0.0", "logging.progress=false", "logging.tensorboard=false"])
    crpo = run_crpo(cfg)
    from json import loads

    steps_m = [loads(x) for x in (Path(work) / cfg.run.name / "metrics.jsonl").read_text().splitlines()][1:]
    gen_tps = median([s["generated_tokens"] / s["time_generate"] for s in steps_m]) / cfg.rollout.num_workers
    params = count_params(model_dir(size))
    flops = median([6 * params * s["train_tokens"] / s["time_train"] for s in steps_m])
    mfu = flops / (peak_tflops() * 1e12 * learners)
    return {"gpu": gpu_name(), "gpus": n_gpus, "learner_gpus": learners, "model": size, "params": params,
            "generated_tokens_per_s_per_gpu": gen_tps, "learner_mfu_lower_bound": mfu, "crpo": crpo}
