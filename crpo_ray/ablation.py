"""GRPO-vs-CRPO ablation: the two configs, and the comparison of their runs. Pure (no Ray).

The two runs share every setting (seed, data, model, sizes) and differ only in the
stage betas: GRPO is ``algorithm.name=grpo algorithm.schedule=none`` (every beta 0),
CRPO is the config as given (it must have a non-zero beta). Their run names are
``<run.name>-grpo`` and ``<run.name>-crpo``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from crpo_ray.algo import stage_betas_from_config
from crpo_ray.config import ConfigError, load_config

ARMS = ("grpo", "crpo")


def ablation_configs(path: Optional[str], overrides: Sequence[str]) -> dict:
    """{"grpo": Config, "crpo": Config} from one config file and overrides."""
    base = load_config(path, list(overrides))
    if base.algorithm.name != "crpo" or not any(stage_betas_from_config(base.algorithm, len(base.stage_names))):
        raise ConfigError("ablate: the config must be a CRPO config with non-zero stage betas "
                          "(algorithm.name=crpo and a schedule other than none)")
    name = base.run.name
    return {
        "grpo": load_config(path, list(overrides) + [f"run.name={name}-grpo", "algorithm.name=grpo",
                                                     "algorithm.schedule=none"]),
        "crpo": load_config(path, list(overrides) + [f"run.name={name}-crpo"]),
    }


def flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(a: dict, b: dict) -> Dict[str, tuple]:
    """Flattened keys whose values differ between two resolved config dicts: key -> (a, b)."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _vals(rows: Sequence[dict], key: str) -> List[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]


def _mean(xs: List[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def _last(xs: List[float]) -> Optional[float]:
    return xs[-1] if xs else None


def summarize_run(rows: Sequence[dict], stage_names: Sequence[str], betas: Sequence[float]) -> dict:
    """Figures of one arm from its metrics.jsonl rows."""
    f1_keys = sorted({k for r in rows for k in r if k.startswith("eval_f1/")})
    return {
        "steps": len(rows),
        "stage_betas": list(betas),
        "reward_mean": _mean(_vals(rows, "reward")),
        "reward_last": _last(_vals(rows, "reward")),
        "accuracy_mean": _mean(_vals(rows, "accuracy")),
        "eval_f1_last": _last(_vals(rows, "eval_f1")),
        "eval_f1_per_dataset": {k[8:]: _last(_vals(rows, k)) for k in f1_keys},
        "stage_entropy_mean": {n: _mean(_vals(rows, f"rollout_stage_entropy/{n}")) for n in stage_names},
    }


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def to_markdown(summary: dict) -> str:
    runs = summary["runs"]
    lines = ["| metric | GRPO | CRPO | CRPO - GRPO |", "|---|---|---|---|"]

    def row(label, a, b):
        d = b - a if a is not None and b is not None else None
        lines.append(f"| {label} | {_f(a)} | {_f(b)} | {_f(d)} |")

    g, c = runs["grpo"], runs["crpo"]
    row("reward (mean over steps)", g["reward_mean"], c["reward_mean"])
    row("reward (last step)", g["reward_last"], c["reward_last"])
    row("accuracy (mean over steps)", g["accuracy_mean"], c["accuracy_mean"])
    row("eval weighted F1 (last eval)", g["eval_f1_last"], c["eval_f1_last"])
    for d in sorted(set(g["eval_f1_per_dataset"]) | set(c["eval_f1_per_dataset"])):
        row(f"eval F1 {d}", g["eval_f1_per_dataset"].get(d), c["eval_f1_per_dataset"].get(d))
    for n in summary["stage_names"]:
        row(f"entropy {n} (mean over steps)", g["stage_entropy_mean"].get(n), c["stage_entropy_mean"].get(n))
    betas = " | ".join(", ".join(f"{b:+.3f}" for b in runs[a]["stage_betas"]) for a in ARMS)
    lines.append(f"| stage betas | {betas} | |")
    diffs = ", ".join(f"`{k}`" for k in summary["config_differences"]) or "none"
    lines.append("n/a: not measured (a stage that never appeared in the completions has no entropy).")
    lines += ["", f"Same seed ({summary['seed']}), {g['steps']} / {c['steps']} steps. "
              f"Resolved configs differ only in: {diffs}.", "",
              summary.get("note", "")]
    return "\n".join(lines).rstrip() + "\n"


def chart(rows: Dict[str, Sequence[dict]], stage_names: Sequence[str]) -> bytes:
    """Reward, eval F1 and per-stage entropy over steps, GRPO beside CRPO."""
    from crpo_ray.plots import multi_panel

    def s(key):
        out = {}
        for arm in ARMS:
            pts = [(r.get("step", i) + 1, r[key]) for i, r in enumerate(rows[arm])
                   if isinstance(r.get(key), (int, float))]
            out[arm.upper()] = ([p[0] for p in pts], [p[1] for p in pts])
        return out

    panels = [("reward", s("reward")), ("eval weighted F1", s("eval_f1"))]
    panels += [(f"rollout entropy: {n}", s(f"rollout_stage_entropy/{n}")) for n in stage_names]
    return multi_panel(panels)
