"""Charts as PNG bytes (matplotlib, Agg backend; no display needed). Pure: lists in, bytes out."""

from __future__ import annotations

import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Series = Dict[str, Tuple[List[float], List[float]]]  # name -> (steps, values)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _finite(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and not math.isnan(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _lines(ax, series: Series) -> None:
    drawn = 0
    for name, (xs, ys) in series.items():
        xs, ys = _finite(xs, ys)
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
        drawn += len(xs)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not drawn:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#888")


def line_chart(series: Series, title: str, ylabel: str = "", xlabel: str = "step") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    _lines(ax, series)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    return _png(fig)


def stacked_bars(steps: Sequence[int], parts: Dict[str, List[float]], title: str, ylabel: str = "seconds") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = [0.0] * len(steps)
    for name, vals in parts.items():
        vals = [v if isinstance(v, (int, float)) and not math.isnan(v) else 0.0 for v in vals]
        ax.bar(list(steps), vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return _png(fig)


def grouped_bars(groups: Sequence[str], bars: Dict[str, List[Optional[float]]], title: str,
                 ylabel: str = "weighted F1") -> bytes:
    """One group per x tick (e.g. dataset), one bar per entry of ``bars`` (e.g. model, baselines)."""
    fig, ax = plt.subplots(figsize=(min(14, max(5, 0.8 * len(groups) + 2)), 4.2))
    width = 0.8 / max(1, len(bars))
    for i, (name, vals) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None and not math.isnan(v) else 0.0 for v in vals]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8, rotation=30 if len(groups) > 5 else 0, ha="right" if len(groups) > 5 else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _png(fig)


def eval_chart(result: dict) -> bytes:
    """Weighted F1 per dataset and the mean, beside the majority and uniform baselines."""
    names = list(result["datasets"]) + ["mean"]
    per = list(result["datasets"].values())
    bars = {
        "model": [s["weighted_f1"] for s in per] + [result["mean_weighted_f1"]],
        "majority class": [s["baselines"]["majority"]["weighted_f1"] for s in per]
        + [result["baselines"]["majority"]["mean_weighted_f1"]],
        "uniform random": [s["baselines"]["uniform"]["weighted_f1"] for s in per]
        + [result["baselines"]["uniform"]["mean_weighted_f1"]],
    }
    return grouped_bars(names, bars, "Weighted F1 per dataset")


def multi_panel(panels: Sequence[Tuple[str, Series]], ncols: int = 2) -> bytes:
    """Several line charts in one figure (the ablation comparison)."""
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3 * nrows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        _lines(ax, series)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _png(fig)
