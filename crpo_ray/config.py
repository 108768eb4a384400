"""The one typed configuration tree.

Loaded once at the CLI from a YAML file plus ``key=value`` overrides, checked
against these dataclasses by OmegaConf (unknown keys and wrong types fail with one
line naming the key and the file), checked for meaning by :func:`validate`, and
returned as frozen dataclass instances. Each component receives only its own
section.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crpo_ray.secret_keys import find_secret_keys, secret_keys_message

DEFAULT_STAGES = (
    ("stimulus", "the key event, situation or object in the post, stated without interpretation"),
    ("primary_appraisal", "how much the event matters to the writer and what harm, threat or challenge it may bring"),
    ("secondary_appraisal", "the resources, support and coping options the writer has or lacks"),
    ("reaction", "the emotional and behavioural responses the writer shows or is likely to show"),
    ("mental_state", "the most probable mental-health condition or state, given the stages above"),
)


class ConfigError(ValueError):
    """A configuration problem, stated in one line that names the key and the file."""


@dataclass(frozen=True)
class StageConfig:
    name: str = "stage"
    description: str = ""


@dataclass(frozen=True)
class ModelConfig:
    # A local Hugging Face directory, or "builtin:tiny-qwen3" for the offline tiny model.
    path: str = "builtin:tiny-qwen3"
    # Where the builtin tiny model is built (once; deterministic for tiny_seed).
    tiny_cache_dir: str = ".cache/crpo-ray"
    tiny_seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"


@dataclass(frozen=True)
class DataSourceConfig:
    format: str = "mental_r1"  # mental_r1 | imhi
    root: str = "data/mental-r1"
    split: str = "train"  # train | val | test
    datasets: List[str] = field(default_factory=list)  # empty: every dataset found
    max_examples_per_dataset: int = 0  # 0: all


@dataclass(frozen=True)
class DataConfig:
    train: List[DataSourceConfig] = field(default_factory=list)
    eval: List[DataSourceConfig] = field(default_factory=list)
    strict: bool = True  # malformed rows fail (True) or are skipped and counted (False)
    fix_mojibake: bool = True
    shuffle_seed: int = 0


@dataclass(frozen=True)
class PromptConfig:
    stages: List[StageConfig] = field(
        default_factory=lambda: [StageConfig(n, d) for n, d in DEFAULT_STAGES]
    )
    system_prompt: str = ""  # empty: built from the stages
    prefill: bool = True  # assistant turn starts with "<think>\n<first stage>"
    max_prompt_tokens: int = 512


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    num_workers: int = 1
    num_scorers: int = 1
    group_size: int = 4
    prompts_per_step: int = 8
    temperature: float = 0.85
    top_p: float = 0.95
    max_new_tokens: int = 512
    vllm_logprobs_topk: int = 20
    vllm_gpu_memory_utilization: float = 0.5
    # Elastic pool: num_workers start; the pool grows to max_workers while prompt groups wait
    # and shrinks to min_workers when workers idle (None: num_workers, a fixed pool).
    min_workers: Optional[int] = None
    max_workers: Optional[int] = None
    scale_up_pending: int = 0  # add a worker while more than this many groups wait ...
    scale_up_after_s: float = 10.0  # ... for this long
    scale_down_idle_s: float = 60.0  # retire a worker idle this long
    chunk_groups: int = 0  # prompt groups per generate call; 0: prompts_per_step / num_workers
    max_attempts: int = 3  # a chunk whose worker dies is re-dispatched up to this many times
    torch_threads: int = 0  # per rollout worker; 0: from the cores and cluster.mode (scheduling.torch_threads)


@dataclass(frozen=True)
class RewardConfig:
    format_value: float = 0.5  # +value if well formed, -value otherwise
    accuracy_scale: float = 1.0  # multiplies the +-w accuracy reward
    balanced: bool = True  # w = sqrt(w_class * w_dataset); False: w = 1
    uncertainty_weight: float = 0.0  # weight of the first-minus-last stage entropy drop


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "crpo"  # crpo | grpo (grpo: every stage beta is 0)
    schedule: str = "tanh"  # tanh | linear | list | none
    tanh_m: float = 0.06
    tanh_tau: float = 3.5
    linear_start: float = -0.06
    linear_end: float = 0.06
    betas: List[float] = field(default_factory=list)  # for schedule: list
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_beta: float = 0.01
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | dr_grpo
    adv_eps: float = 1e-4
    scale_adv_by_std: bool = True
    recompute_old_logprobs: bool = True
    # Async mode (samples up to max_staleness versions old): "decoupled" clips against the
    # learner's current weights and weights each token by min(pi_current / pi_behavior, is_cap);
    # "behavior_ratio" clips the ratio to the behavior policy directly (plain PPO on stale data).
    off_policy: str = "decoupled"
    is_cap: float = 2.0
    # > 0: a stage's entropy bonus acts on a sample only while its mean stage entropy is below
    # this (guards against entropy runaway, seen in async mode); 0: off, the paper's loss
    entropy_ceiling: float = 0.0


@dataclass(frozen=True)
class LearnerConfig:
    num_workers: int = 2
    use_gpu: bool = False
    backend: str = "auto"  # auto | gloo | nccl
    lr: float = 5e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    lr_schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    torch_threads: int = 0  # per learner worker; 0: from the cores and cluster.mode (scheduling.torch_threads)


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # empty: embedded local Ray on 127.0.0.1 (or RAY_ADDRESS)
    num_cpus: int = 0  # embedded Ray only; 0: all cores
    namespace: str = "crpo-ray"
    mode: str = "sync"  # sync | async
    max_staleness: int = 1  # async: samples from policy version >= step - max_staleness
    # Placement: custom resources each actor requests, matching node types' resources
    # (e.g. {rollout: 1}); empty: anywhere.
    rollout_resources: Dict[str, float] = field(default_factory=dict)
    learner_resources: Dict[str, float] = field(default_factory=dict)
    scorer_resources: Dict[str, float] = field(default_factory=dict)
    learner_placement: str = "pack"  # pack | spread (Ray Train placement group strategy)
    rollout_placement: str = "default"  # default | spread
    request_resources: bool = True  # elastic pool asks the autoscaler for rollout bundles


@dataclass(frozen=True)
class RunConfig:
    name: str = "crpo"
    output_dir: str = "runs"
    seed: int = 0
    total_steps: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_max_examples: int = 64


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True
    log_completions: int = 2


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # 0: only the final one
    keep_last: int = 2
    storage_path: str = ""  # empty: <output_dir>/<name>/checkpoints; or s3://, gs://
    resume: bool = False
    max_failures: int = 2  # learner worker-group restarts from the last checkpoint


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def stage_names(self) -> List[str]:
        return [s.name for s in self.prompt.stages]


def _omegaconf_error(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not in" in first or type(exc).__name__ == "ConfigKeyError":
        return ConfigError(f"{where}: unknown key '{key}'")
    return ConfigError(f"{where}: key '{key}': {first}")


def _read_yaml(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    secrets = find_secret_keys(raw)
    if secrets:
        raise ConfigError(secret_keys_message(secrets, str(path)))
    _check_keys(raw, Config, "", str(path))
    return OmegaConf.create(raw)


def _check_keys(raw: dict, cls, prefix: str, where: str) -> None:
    """Unknown keys anywhere in the tree, named with their full path (``data.train[0].rooot``)."""
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{where}: unknown key '{full}'")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _check_keys(value, hint, full + ".", where)
        elif typing.get_origin(hint) in (list, List) and isinstance(value, list):
            (item,) = typing.get_args(hint) or (None,)
            if dataclasses.is_dataclass(item):
                for i, element in enumerate(value):
                    if isinstance(element, dict):
                        _check_keys(element, item, f"{full}[{i}].", where)


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load ``path`` (YAML) over the defaults, apply ``key=value`` overrides, validate.

    Raises :class:`ConfigError` with one line naming the offending key and file.
    """
    merged = OmegaConf.structured(Config)
    where = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            merged = OmegaConf.merge(merged, _read_yaml(Path(path)))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, where) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        if find_secret_keys({item.split("=", 1)[0]: None}):
            raise ConfigError(secret_keys_message([item.split("=", 1)[0]], f"override '{item.split('=', 1)[0]}'"))
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, f"override '{item}'") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"override '{item}': cannot be applied ({exc}); list items "
                              "(e.g. data.train[0]) are set in the YAML file") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, where) from None
    validate(cfg, where)
    return cfg


def _check(ok: bool, where: str, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: key '{key}': {message}")


def _one_of(value: str, allowed: tuple, where: str, key: str) -> None:
    _check(value in allowed, where, key, f"'{value}' is not one of {', '.join(allowed)}")


def validate(cfg: Config, where: str = "<config>") -> None:
    """Checks of meaning that types alone cannot express."""
    from crpo_ray.algo import AGGREGATIONS, SCHEDULES, stage_betas_from_config

    names = cfg.stage_names
    _check(len(names) >= 1, where, "prompt.stages", "at least one stage is required")
    _check(len(set(names)) == len(names), where, "prompt.stages", "stage names must be unique")
    for n in names:
        _check(n.replace("_", "").isalnum() and n not in ("think", "answer"), where,
               "prompt.stages", f"stage name '{n}' must be letters, digits or _ and not think/answer")
    _check(cfg.prompt.max_prompt_tokens >= 32, where, "prompt.max_prompt_tokens", "must be >= 32")
    _one_of(cfg.model.dtype, ("float32", "bfloat16", "float16"), where, "model.dtype")
    _one_of(cfg.rollout.engine, ("hf", "vllm"), where, "rollout.engine")
    _check(cfg.rollout.group_size >= 2, where, "rollout.group_size", "must be >= 2 (group advantages)")
    _check(cfg.rollout.num_workers >= 1, where, "rollout.num_workers", "must be >= 1")
    _check(cfg.rollout.num_scorers >= 1, where, "rollout.num_scorers", "must be >= 1")
    _check(cfg.rollout.prompts_per_step >= 1, where, "rollout.prompts_per_step", "must be >= 1")
    _check(cfg.rollout.temperature > 0, where, "rollout.temperature", "must be > 0")
    _check(0 < cfg.rollout.top_p <= 1, where, "rollout.top_p", "must be in (0, 1]")
    _check(cfg.rollout.max_new_tokens >= 1, where, "rollout.max_new_tokens", "must be >= 1")
    algo = cfg.algorithm
    _one_of(algo.name, ("crpo", "grpo"), where, "algorithm.name")
    _one_of(algo.schedule, tuple(SCHEDULES), where, "algorithm.schedule")
    _one_of(algo.aggregation, tuple(AGGREGATIONS), where, "algorithm.aggregation")
    _check(algo.clip_low >= 0 and algo.clip_high >= 0, where, "algorithm.clip_low", "clip ranges must be >= 0")
    _check(algo.kl_beta >= 0, where, "algorithm.kl_beta", "must be >= 0")
    _one_of(algo.off_policy, ("decoupled", "behavior_ratio"), where, "algorithm.off_policy")
    _check(algo.is_cap >= 1, where, "algorithm.is_cap", "must be >= 1")
    _check(algo.entropy_ceiling >= 0, where, "algorithm.entropy_ceiling", "must be >= 0 (0: off)")
    try:
        betas = stage_betas_from_config(algo, len(names))
    except ValueError as exc:
        raise ConfigError(f"{where}: key 'algorithm.betas': {exc}") from None
    if algo.name == "grpo":
        _check(all(b == 0.0 for b in betas), where, "algorithm.name",
               "grpo means every stage beta is 0: set algorithm.schedule=none")
    _check(cfg.learner.num_workers >= 1, where, "learner.num_workers", "must be >= 1")
    _check(cfg.learner.torch_threads >= 0, where, "learner.torch_threads", "must be >= 0 (0: automatic)")
    _check(cfg.rollout.torch_threads >= 0, where, "rollout.torch_threads", "must be >= 0 (0: automatic)")
    _check(cfg.learner.micro_batch_size >= 1, where, "learner.micro_batch_size", "must be >= 1")
    _check(cfg.learner.lr > 0, where, "learner.lr", "must be > 0")
    _one_of(cfg.learner.backend, ("auto", "gloo", "nccl"), where, "learner.backend")
    _one_of(cfg.learner.lr_schedule, ("constant", "linear", "cosine"), where, "learner.lr_schedule")
    _one_of(cfg.cluster.mode, ("sync", "async"), where, "cluster.mode")
    _check(cfg.cluster.max_staleness >= 0, where, "cluster.max_staleness", "must be >= 0")
    _one_of(cfg.cluster.learner_placement, ("pack", "spread"), where, "cluster.learner_placement")
    _one_of(cfg.cluster.rollout_placement, ("default", "spread"), where, "cluster.rollout_placement")
    for section in ("rollout_resources", "learner_resources", "scorer_resources"):
        for name, amount in getattr(cfg.cluster, section).items():
            _check(amount > 0 and name not in ("CPU", "GPU"), where, f"cluster.{section}.{name}",
                   "custom resource amounts must be > 0 (CPU and GPU are set by the program)")
    _check(cfg.checkpoint.max_failures >= 0, where, "checkpoint.max_failures", "must be >= 0")
    ro = cfg.rollout
    lo, hi = pool_bounds(ro)
    _check(0 <= lo <= ro.num_workers <= hi, where, "rollout.min_workers",
           f"need 0 <= min_workers ({lo}) <= num_workers ({ro.num_workers}) <= max_workers ({hi})")
    _check(ro.chunk_groups >= 0 and ro.scale_up_pending >= 0, where, "rollout.chunk_groups", "must be >= 0")
    _check(ro.scale_up_after_s >= 0 and ro.scale_down_idle_s > 0, where, "rollout.scale_down_idle_s",
           "scale_up_after_s must be >= 0 and scale_down_idle_s > 0")
    _check(ro.max_attempts >= 1, where, "rollout.max_attempts", "must be >= 1")
    _check(cfg.run.total_steps >= 1, where, "run.total_steps", "must be >= 1")
    for section in ("train", "eval"):
        for i, src in enumerate(getattr(cfg.data, section)):
            key = f"data.{section}[{i}]"
            _one_of(src.format, ("mental_r1", "imhi"), where, f"{key}.format")
            _one_of(src.split, ("train", "val", "test"), where, f"{key}.split")
            _check(src.max_examples_per_dataset >= 0, where, f"{key}.max_examples_per_dataset", "must be >= 0")


def pool_bounds(rollout: RolloutConfig):
    """(min_workers, max_workers) of the rollout pool; None means num_workers."""
    lo = rollout.num_workers if rollout.min_workers is None else rollout.min_workers
    hi = rollout.num_workers if rollout.max_workers is None else rollout.max_workers
    return lo, hi


def to_dict(cfg) -> dict:
    """Plain nested dict of a config (or one section), for logs and checkpoints."""
    return dataclasses.asdict(cfg)
