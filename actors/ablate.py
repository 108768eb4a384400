"""``crpo-ray ablate``: GRPO then CRPO from the same seed and config, then one comparison.

Writes, under the output directory: ``ablation.json``, ``ablation.md``, ``ablation.png``.
Each run keeps its own run directory (``<output_dir>/<name>-grpo`` and ``-crpo``) with its
resolved ``config.yaml``, ``metrics.jsonl`` and ``samples.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from crpo_ray import ablation
from crpo_ray.algo import stage_betas_from_config
from crpo_ray.config import ConfigError, to_dict
from crpo_ray.report import read_jsonl

TINY_NOTE = ("Tiny CPU model (random weights, a few steps): this shows the mechanics of the comparison, "
             "not the paper's effect. For the real comparison use configs/qwen3-8b-mental-r1.yaml on GPUs.")


def run_ablation(path: Optional[str], overrides: Sequence[str], out: Optional[str] = None) -> dict:
    from crpo_ray.actors.driver import check_inputs, run_training

    cfgs = ablation.ablation_configs(path, overrides)
    for cfg in cfgs.values():  # every input checked before either run starts
        check_inputs(cfg)
        run_dir = Path(cfg.checkpoint.storage_path or cfg.run.output_dir).expanduser().resolve() / cfg.run.name
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"ablate: {run_dir} already holds a run; choose another run.name")
    base = cfgs["crpo"]
    out_dir = Path(out or Path(base.run.output_dir) / f"{base.run.name[:-len('-crpo')]}-ablation")
    rows, runs = {}, {}
    for arm in ablation.ARMS:
        cfg = cfgs[arm]
        final = run_training(cfg)
        rows[arm] = read_jsonl(Path(final["run_dir"]) / "metrics.jsonl")
        runs[arm] = {**ablation.summarize_run(rows[arm], cfg.stage_names,
                                              stage_betas_from_config(cfg.algorithm, len(cfg.stage_names))),
                     "run_dir": final["run_dir"]}
    note = TINY_NOTE if base.model.path.startswith("builtin:") else ""
    summary = {"seed": base.run.seed, "stage_names": base.stage_names, "runs": runs, "note": note,
               "config_differences": {k: list(v) for k, v in
                                      ablation.config_differences(to_dict(cfgs["grpo"]), to_dict(cfgs["crpo"])).items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "ablation.md").write_text(ablation.to_markdown(summary), encoding="utf-8")
    (out_dir / "ablation.png").write_bytes(ablation.chart(rows, base.stage_names))
    summary["out_dir"] = str(out_dir)
    return summary
