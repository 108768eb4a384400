"""(6) PNG plots from the result JSON (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import List

LANES = [("fleet: prepare", "fleet", "time_prepare"), ("rollout: generate", "fleet", "time_generate"),
         ("scorer: score", "fleet", "time_score"), ("learner: wait batch", "learner", "time_wait_batch"),
         ("learner: train", "learner", "time_train"), ("learner: gather", "learner", "sync_gather_s"),
         ("learner: pack+put", "learner", "sync_put_s"), ("rollout: load weights", "learner", "sync_load_s"),
         ("eval", "learner", "time_eval")]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline(steps: List[dict], title: str, out: Path) -> Path:
    """Which actor did what, when: phases laid end to end from each step's wall-clock start."""
    plt = _plt()
    steps = [s for s in steps if s.get("ts_step_start") and s.get("ts_produce_start")]
    if not steps:
        raise ValueError("no wall-clock timestamps in the run's metrics")
    t0 = min(min(s["ts_step_start"], s["ts_produce_start"]) for s in steps)
    fig, ax = plt.subplots(figsize=(11, 4))
    colors = plt.cm.tab10.colors
    for s in steps:
        cursor = {"fleet": s["ts_produce_start"] - t0, "learner": s["ts_step_start"] - t0}
        for lane, (label, who, key) in enumerate(LANES):
            d = s.get(key) or 0.0
            if who == "learner" and key == "time_train":
                cursor["learner"] = s["ts_step_start"] - t0 + (s.get("time_wait_batch") or 0.0)
            ax.broken_barh([(cursor[who], d)], (lane - 0.4, 0.8), color=colors[lane % 10])
            cursor[who] += d
        ax.axvline(s["ts_step_start"] - t0, color="grey", lw=0.5, ls=":")
    ax.set_yticks(range(len(LANES)), [x[0] for x in LANES])
    ax.set_xlabel("seconds since the first step")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def sync_vs_size(rows: List[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for n, marker in ((1, "o"), (2, "s")):
        pts = sorted((r["bytes"], r["sync_s"], r["floor_s"]) for r in rows if r.get("workers") == n and "sync_s" in r)
        if not pts:
            continue
        x = [p[0] / 2**20 for p in pts]
        ax.plot(x, [p[1] for p in pts], marker=marker, label=f"sync, {n} rollout worker(s)")
        ax.plot(x, [p[2] for p in pts], ls="--", marker=marker, mfc="none", label=f"floor, {n} worker(s)")
        ax.plot(x, [2 * p[2] for p in pts], ls=":", lw=0.8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("packed weights (MiB)")
    ax.set_ylabel("seconds per sync")
    ax.set_title("Weight sync vs floor (dotted: 2x floor target)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput(trl: dict, out: Path) -> Path:
    plt = _plt()
    labels = ["TRL GRPOTrainer", "crpo-ray sync"] + (["crpo-ray async"] if "crpo_async" in trl else [])
    values = [trl["trl"]["samples_per_s"], trl["crpo_sync"]["samples_per_s"]]
    values += [trl["crpo_async"]["samples_per_s"]] if "crpo_async" in trl else []
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bars = ax.bar(labels, values, color=["#999999", "#1f77b4", "#2ca02c"][:len(values)])
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("samples / second")
    ratios = f"sync {trl['ratio_sync']:.2f}x" + (f", async {trl['ratio_async']:.2f}x" if "ratio_async" in trl else "")
    ax.set_title(f"Same model ({trl['params'] / 1e6:.1f}M), prompts, G, steps; {ratios}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
