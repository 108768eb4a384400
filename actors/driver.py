"""The driver: check every input, start or join Ray, wire the fleet and the learner, run.

Everything that can be wrong with the inputs (config, data, model files, engine) is
checked before any directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Optional, Tuple

from crpo_ray.config import Config, ConfigError
from crpo_ray.scheduling import torch_threads


def require_engine(cfg: Config) -> None:
    """The selected rollout engine can be imported (vLLM is an optional extra)."""
    from crpo_ray.engines import VLLM_MISSING

    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)


def check_inputs(cfg: Config):
    """Load data and model files; raise one-line errors. Returns (model_dir, train, evals, reports)."""
    from transformers import AutoTokenizer

    from crpo_ray.data import load_sources
    from crpo_ray.tiny import resolve_model_path

    require_engine(cfg)
    if not cfg.data.train:
        raise ConfigError("data.train is empty: configure at least one training source")
    train, train_report = load_sources(cfg.data.train, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    evals, eval_report = load_sources(cfg.data.eval, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    if train.num_rows == 0:
        raise ConfigError("data.train: no usable training examples")
    model_dir = resolve_model_path(cfg.model.path, cfg.model.tiny_cache_dir, cfg.model.tiny_seed)
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if not any((Path(model_dir) / f).is_file() for f in tokenizer_files):
        raise FileNotFoundError(f"model.path '{model_dir}': no tokenizer files ({', '.join(tokenizer_files)})")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad model directory
        raise FileNotFoundError(f"model.path '{model_dir}': cannot load a tokenizer ({type(exc).__name__})") from None
    if tok.chat_template is None:
        raise FileNotFoundError(f"model.path '{model_dir}': the tokenizer has no chat template")
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if samples < cfg.learner.num_workers:
        raise ConfigError(f"rollout.prompts_per_step x group_size = {samples} is fewer than learner.num_workers")
    return model_dir, tok, train, evals, (train_report, eval_report)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def prefer_loopback(address: str) -> None:
    """Keep an embedded or loopback cluster on 127.0.0.1.

    Ray 2.60 replaces a node IP of 127.0.0.1 by the machine's address unless this
    setting (read when ``ray`` is first imported) is off; it only changes which address
    a node advertises, so it is set only when the cluster is this machine's own.
    """
    import sys

    host = address.split("://")[-1].rsplit(":", 1)[0] if address else ""
    if host in ("", "127.0.0.1", "localhost") and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")


def init_ray(cfg: Config, num_cpus_needed: int) -> None:
    """Join the configured cluster (or RAY_ADDRESS, as under `ray job submit`); else start one on 127.0.0.1."""
    prefer_loopback(cfg.cluster.address or os.environ.get("RAY_ADDRESS", ""))
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    env = {"env_vars": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    if address:
        ray.init(address=address, namespace=cfg.cluster.namespace, runtime_env=env, log_to_driver=True)
        return
    cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, num_cpus_needed)
    # address="local": always a new cluster of our own, never one found running on the machine
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=cpus, include_dashboard=False,
             namespace=cfg.cluster.namespace, runtime_env=env, log_to_driver=True)


def actor_threads(cfg: Config) -> Tuple[int, int]:
    """Torch threads (per learner worker, per rollout worker): the config's, else automatic."""
    pool = max(cfg.rollout.num_workers, cfg.rollout.max_workers or 0)
    auto = torch_threads(os.cpu_count() or 1, cfg.learner.num_workers, pool, cfg.cluster.mode)
    return cfg.learner.torch_threads or auto[0], cfg.rollout.torch_threads or auto[1]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint that verifies; newer damaged ones are reported and skipped."""
    from crpo_ray.actors.checkpoint import latest_valid_checkpoint

    found, skipped = latest_valid_checkpoint(run_dir)
    for line in skipped:
        print(f"[crpo-ray] --resume: skipping {line}", flush=True)
    return found


def run_training(cfg: Config, resume: bool = False) -> dict:
    """Train; returns the final metrics. Raises ConfigError/DataError/FileNotFoundError on bad input."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    model_dir, tok, train, evals, reports = check_inputs(cfg)
    run_dir = Path(cfg.checkpoint.storage_path or cfg.run.output_dir).expanduser().resolve() / cfg.run.name
    resume_from = latest_checkpoint(run_dir) if (resume or cfg.checkpoint.resume) else None
    if (resume or cfg.checkpoint.resume) and resume_from is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run_dir}")
    if resume_from is None and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run.name '{cfg.run.name}': {run_dir} already holds a run; use --resume or another name")

    learners, rollouts = cfg.learner.num_workers, cfg.rollout.num_workers
    learner_threads, threads = actor_threads(cfg)
    init_ray(cfg, learners + rollouts + 2)  # first: it decides how Ray is imported (loopback)

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from crpo_ray.actors.train_loop import train_loop_per_worker

    fleet = _start_fleet(cfg, str(model_dir), train, evals, threads)
    backend = cfg.learner.backend if cfg.learner.backend != "auto" else ("nccl" if cfg.learner.use_gpu else "gloo")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "fleet": fleet, "model_dir": str(model_dir), "run_dir": str(run_dir),
                           "pad_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                           "threads": learner_threads, "resume_from": str(resume_from) if resume_from else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=learners, use_gpu=cfg.learner.use_gpu, placement_strategy=cfg.cluster.learner_placement.upper(),
            resources_per_worker={"CPU": 1, **cfg.cluster.learner_resources}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=str(run_dir.parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures)),
        torch_config=TorchConfig(backend=backend),
    )
    save_resolved_config(cfg, run_dir)
    start = time.perf_counter()
    try:
        result = trainer.fit()
    finally:
        _stop_fleet(fleet)
    metrics = dict(result.metrics or {})
    metrics["wall_time"] = time.perf_counter() - start
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    metrics["run_dir"] = str(run_dir)
    return metrics


def _start_fleet(cfg: Config, model_dir: str, train, evals, threads: int):
    """The fleet actor lives on the driver's node: losing a worker node never takes it down."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from crpo_ray.actors.fleet import FleetActor

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return FleetActor.options(num_cpus=0, scheduling_strategy=here).remote(cfg, model_dir, train, evals, threads)


def _stop_fleet(fleet) -> None:
    import ray

    try:
        ray.get(fleet.close.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - best effort; the actor is killed next
        pass
    ray.kill(fleet)


def save_resolved_config(cfg: Config, run_dir: Path) -> Path:
    """RUN_DIR/config.yaml: the resolved config of the run (what ``crpo-ray ablate`` compares)."""
    import yaml

    from crpo_ray.config import to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


EVAL_PRESETS = {
    "mental-r1": [("mental_r1", "data/mental-r1")],
    "imhi": [("imhi", "data/imhi")],
    "all": [("mental_r1", "data/mental-r1"), ("imhi", "data/imhi")],
}


def eval_sources(preset: str):
    """Test-split sources for ``--datasets mental-r1|imhi|all``."""
    from crpo_ray.config import DataSourceConfig

    if preset not in EVAL_PRESETS:
        raise ConfigError(f"--datasets '{preset}': expected one of {', '.join(EVAL_PRESETS)}")
    return [DataSourceConfig(format=f, root=r, split="test") for f, r in EVAL_PRESETS[preset]]


def run_eval(cfg: Config, max_samples: int) -> dict:
    """Greedy answers from the rollout workers on the eval split; weighted F1 per dataset."""
    from crpo_ray.data import load_sources
    from crpo_ray.tiny import resolve_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_engine(cfg)
    evals, report = load_sources(cfg.data.eval, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    if evals.num_rows == 0:
        raise ConfigError("no evaluation examples (data.eval or --datasets)")
    model_dir = resolve_model_path(cfg.model.path, cfg.model.tiny_cache_dir, cfg.model.tiny_seed)
    init_ray(cfg, cfg.rollout.num_workers + 1)  # first: it decides how Ray is imported (loopback)
    import ray

    threads = cfg.rollout.torch_threads or torch_threads(os.cpu_count() or 1, 1, cfg.rollout.num_workers, "sync")[1]
    fleet = _start_fleet(cfg, str(model_dir), evals, evals, threads)  # nothing else runs: every core
    try:
        result = ray.get(fleet.evaluate.remote(max_samples))
    except ray.exceptions.RayTaskError as exc:  # bad input found in the actor (e.g. the prompt budget): one line
        if isinstance(exc.cause, (ValueError, FileNotFoundError)):
            raise exc.cause from None
        raise
    finally:
        _stop_fleet(fleet)
    result["unmapped_gold_labels"] = report.unmapped
    result["model"] = str(model_dir)
    return result
