"""Every YAML in configs/ loads; bad keys and types fail with one line naming key and file."""

import dataclasses
from pathlib import Path

import pytest

from crpo_ray.algo import stage_betas_from_config
from crpo_ray.config import Config, ConfigError, load_config
from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_present():
    names = {p.name for p in CONFIGS}
    assert {"tiny-cpu.yaml", "tiny-cpu-grpo.yaml", "qwen3-8b-mental-r1.yaml", "qwen3-8b-mental-r1-grpo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    betas = stage_betas_from_config(cfg.algorithm, len(cfg.stage_names))
    if path.stem.endswith("-grpo"):
        assert cfg.algorithm.name == "grpo" and betas == [0.0] * 5
    else:
        assert [round(b, 4) for b in betas] == [-0.0592, -0.0543, -0.0277, 0.0277, 0.0543]


@pytest.mark.parametrize("stem", ["tiny-cpu", "qwen3-8b-mental-r1"])
def test_grpo_baseline_differs_only_in_betas(stem):
    crpo = dataclasses.asdict(load_config(REPO / "configs" / f"{stem}.yaml"))
    grpo = dataclasses.asdict(load_config(REPO / "configs" / f"{stem}-grpo.yaml"))
    for cfg in (crpo, grpo):
        cfg["run"].pop("name")
        cfg["algorithm"].pop("name")
        cfg["algorithm"].pop("schedule")
    assert crpo == grpo


def test_paper_setup():
    cfg = load_config(REPO / "configs" / "qwen3-8b-mental-r1.yaml")
    assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.top_p) == (4, 0.85, 0.95)
    assert (cfg.prompt.max_prompt_tokens, cfg.rollout.max_new_tokens) == (512, 512)
    assert (cfg.learner.lr, cfg.algorithm.kl_beta) == (5e-6, 0.01)
    assert cfg.data.train[0].datasets == ["DATD", "RSD", "DepSeverity", "LT-EDI", "SDCNL", "Dreaddit", "FIG", "LID"]
    assert "Qwen3-8B" in cfg.model.path


def _error(tmp_path, text, overrides=()):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_misspelled_key_names_itself(tmp_path):
    msg = _error(tmp_path, "rollout:\n  grup_size: 4\n")
    assert "rollout.grup_size" in msg and str(tmp_path / "c.yaml") in msg
    assert "rollouts" in _error(tmp_path, "rollouts:\n  group_size: 4\n")
    assert "data.train[0].rooot" in _error(tmp_path, "data:\n  train:\n    - {format: imhi, rooot: x}\n")


def test_wrong_type_names_key(tmp_path):
    msg = _error(tmp_path, "rollout:\n  group_size: four\n")
    assert "rollout.group_size" in msg and "c.yaml" in msg


def test_semantic_checks(tmp_path):
    assert "rollout.group_size" in _error(tmp_path, "rollout:\n  group_size: 1\n")
    assert "algorithm.schedule" in _error(tmp_path, "algorithm:\n  schedule: cosine\n")
    assert "algorithm.betas" in _error(tmp_path, "algorithm:\n  schedule: list\n  betas: [0.1]\n")
    assert "algorithm.name" in _error(tmp_path, "algorithm:\n  name: grpo\n")
    assert "data.eval[0].split" in _error(tmp_path, "data:\n  eval:\n    - {split: dev}\n")
    assert "invalid YAML" in _error(tmp_path, "run: [unclosed\n")
    assert "prompt.stages" in _error(tmp_path, "prompt:\n  stages:\n    - {name: a}\n    - {name: a}\n")
    assert "algorithm.off_policy" in _error(tmp_path, "algorithm:\n  off_policy: vtrace\n")
    assert "algorithm.is_cap" in _error(tmp_path, "algorithm:\n  is_cap: 0.5\n")
    assert "algorithm.entropy_ceiling" in _error(tmp_path, "algorithm:\n  entropy_ceiling: -0.1\n")
    assert "learner.torch_threads" in _error(tmp_path, "learner:\n  torch_threads: -1\n")


def test_overrides(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", ["rollout.group_size=8", "algorithm.tanh_m=0.1"])
    assert cfg.rollout.group_size == 8 and cfg.algorithm.tanh_m == 0.1
    with pytest.raises(ConfigError, match=r"override 'rollout\.nope=1': unknown key 'rollout\.nope'"):
        load_config(REPO / "configs" / "tiny-cpu.yaml", ["rollout.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["rollout.group_size"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_frozen_after_load():
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.group_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout = None


def test_custom_stages_and_linear_schedule(tmp_path):
    p = Path(tmp_path / "s.yaml")
    p.write_text("prompt:\n  stages:\n    - {name: notice, description: d}\n    - {name: judge, description: e}\n"
                 "algorithm:\n  schedule: linear\n  linear_start: -0.1\n  linear_end: 0.1\n")
    cfg = load_config(p)
    assert cfg.stage_names == ["notice", "judge"]
    assert stage_betas_from_config(cfg.algorithm, 2) == pytest.approx([-0.1, 0.1])
