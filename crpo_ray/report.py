"""Run report: sample completions recorded during training, and one self-contained HTML page.

* :func:`sample_records` (called by the fleet each step) keeps the first ``k`` completions
  of a scored batch with their token strings, per-token entropies and stage ids.
* :func:`render_html` builds the page from the rows of ``metrics.jsonl``, the records of
  ``samples.jsonl`` and an eval result (``eval.json``): inline CSS, charts as base64 PNG,
  no script, no external URL; it opens from disk with no server.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

STAGE_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
OUTSIDE_COLOR = "#bbbbbb"
MAX_TOKENS_SHOWN = 400


def sample_records(table, stage_names: Sequence[str], tokenizer, step: int, k: int) -> List[dict]:
    """The first ``k`` rows of a ``schemas.SCORED`` table as JSON-able records for the report."""
    out = []
    for row in table.slice(0, max(0, k)).to_pylist():
        ids = row["response_ids"][:MAX_TOKENS_SHOWN]
        out.append({
            "step": step, "example_id": row["example_id"], "dataset": row["dataset"], "label": row["label"],
            "reward": row["reward"], "correct": row["correct"], "finish_reason": row["finish_reason"],
            "prompt_truncated": row["prompt_truncated"], "stage_names": list(stage_names),
            "tokens": [tokenizer.decode([i]) for i in ids],
            "entropies": [round(float(e), 4) for e in row["entropies"][:len(ids)]],
            "stage_ids": list(row["stage_ids"][:len(ids)]),
        })
    return out


def read_jsonl(path: Path) -> List[dict]:
    """Rows of a JSON-lines file; a torn last line (run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ---------------------------------------------------------------- chart selection


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) else None


def series(rows: Sequence[dict], keys: Sequence[str]) -> Dict[str, tuple]:
    """name -> (steps, values) for the keys present (with a number) in at least one row."""
    out = {}
    for k in keys:
        pts = [(r.get("step", i) + 1, _num(r.get(k))) for i, r in enumerate(rows)]
        pts = [(s, v) for s, v in pts if v is not None]
        if pts:
            out[k] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def _keys(rows: Sequence[dict], prefix: str) -> List[str]:
    found = []
    for r in rows:
        found += [k for k in r if k.startswith(prefix) and k not in found]
    return found


def chart_specs(rows: Sequence[dict], stage_names: Sequence[str]) -> List[tuple]:
    """(title, series or None) per training chart, in page order; None: not recorded."""
    learner_stage = {f"stage_entropy/{k}": f"learner {n}" for k, n in enumerate(stage_names)}
    stage_s = series(rows, _keys(rows, "rollout_stage_entropy/"))
    stage_s.update({learner_stage[k]: v for k, v in series(rows, list(learner_stage)).items()})
    specs = [
        ("Reward and its components", series(rows, ["reward", "reward_format", "reward_accuracy", "reward_uncertainty"])),
        ("Accuracy and format rate", series(rows, ["accuracy", "format_ok"])),
        ("Eval weighted F1", series(rows, ["eval_f1"] + _keys(rows, "eval_f1/"))),
        ("Per-stage entropy", stage_s),
        ("KL to the reference", series(rows, ["kl"])),
        ("Clip fractions", series(rows, ["clip_frac", "clip_frac_low", "clip_frac_high"])),
        ("Staleness", series(rows, _keys(rows, "staleness"))),
    ]
    return [(t, s or None) for t, s in specs]


TIME_PARTS = ("time_generate", "time_score", "time_train", "time_sync", "time_eval", "time_overhead")


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.charts{display:flex;flex-wrap:wrap;gap:12px} .chart{border:1px solid #eee;padding:6px}
.chart img{width:540px;height:auto;display:block} .missing{width:540px;height:120px;display:flex;
align-items:center;justify-content:center;color:#888;background:#fafafa}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child{text-align:left}
.sample{border:1px solid #ddd;margin:10px 0;padding:8px} .meta{font-size:12px;color:#555;margin-bottom:6px}
.tokens{font-family:monospace;font-size:13px;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.tok{border-bottom:3px solid;padding:0 0 1px 0} .legend span{display:inline-block;margin-right:12px;font-size:12px}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _chart_html(title: str, s: Optional[dict]) -> str:
    from crpo_ray.plots import line_chart

    body = _img(line_chart(s, title), title) if s else f'<div class="missing">{_e(title)}: not recorded</div>'
    return f'<div class="chart">{body}</div>'


def _time_chart(rows: Sequence[dict]) -> str:
    from crpo_ray.plots import stacked_bars

    parts = {k: [_num(r.get(k)) or 0.0 for r in rows] for k in TIME_PARTS if any(_num(r.get(k)) for r in rows)}
    if not parts:
        return '<div class="chart"><div class="missing">Step time: not recorded</div></div>'
    steps = [r.get("step", i) + 1 for i, r in enumerate(rows)]
    return f'<div class="chart">{_img(stacked_bars(steps, parts, "Step time breakdown"), "step time")}</div>'


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def eval_table_html(ev: Optional[dict], rows: Sequence[dict]) -> str:
    """The eval table from an eval result; else the last logged eval_f1 metrics; else "not recorded"."""
    if ev and ev.get("datasets"):
        head = ("<tr><th>dataset</th><th>n</th><th>weighted F1</th><th>majority F1</th><th>uniform F1</th>"
                "<th>accuracy</th><th>unparseable</th><th>truncated answers</th><th>truncated prompts</th></tr>")
        body = []
        for d, s in ev["datasets"].items():
            b = s.get("baselines", {})
            body.append(f"<tr><td>{_e(d)}</td><td>{s['n']}</td><td>{_fmt(s['weighted_f1'])}</td>"
                        f"<td>{_fmt(b.get('majority', {}).get('weighted_f1'))}</td>"
                        f"<td>{_fmt(b.get('uniform', {}).get('weighted_f1'))}</td><td>{_fmt(s.get('accuracy'))}</td>"
                        f"<td>{s.get('unparseable', 0)}</td><td>{s.get('truncated_responses', 'n/a')}</td>"
                        f"<td>{s.get('prompts_truncated', 'n/a')}</td></tr>")
        body.append(f"<tr><th>mean</th><td></td><th>{_fmt(ev.get('mean_weighted_f1'))}</th>"
                    f"<td>{_fmt(ev.get('baselines', {}).get('majority', {}).get('mean_weighted_f1'))}</td>"
                    f"<td>{_fmt(ev.get('baselines', {}).get('uniform', {}).get('mean_weighted_f1'))}</td>"
                    f"<td></td><td>{ev.get('unparseable', 0)}</td><td></td><td></td></tr>")
        return f"<table>{head}{''.join(body)}</table>"
    last = next((r for r in reversed(rows) if _num(r.get("eval_f1")) is not None), None)
    if last is None:
        return "<p>Eval: not recorded (run <code>crpo-ray eval --out RUN_DIR</code> to add it).</p>"
    cells = "".join(f"<tr><td>{_e(k[8:])}</td><td>{_fmt(v)}</td></tr>" for k, v in last.items()
                    if k.startswith("eval_f1/"))
    return (f"<p>From the training log, step {last.get('step', 0) + 1} (greedy, eval split):</p><table>"
            f"<tr><th>dataset</th><th>weighted F1</th></tr>{cells}<tr><th>mean</th><th>{_fmt(last['eval_f1'])}</th>"
            f"</tr></table><p>Unparseable answers: {last.get('eval_unparseable', 'n/a')}</p>")


def sample_html(rec: dict) -> str:
    """One completion: each token underlined in its stage's color, its background shaded by entropy."""
    ents = rec.get("entropies") or []
    finite = [e for e in ents if e == e] or [0.0]
    low, span = min(finite), (max(finite) - min(finite)) or 1.0
    spans = []
    for tok, ent, sid in zip(rec.get("tokens", []), ents, rec.get("stage_ids", [])):
        color = STAGE_COLORS[sid % len(STAGE_COLORS)] if sid >= 0 else OUTSIDE_COLOR
        alpha = min(1.0, max(0.0, (ent - low) / span)) * 0.6 if ent == ent else 0.0
        spans.append(f'<span class="tok" style="border-color:{color};background:rgba(255,140,0,{alpha:.2f})" '
                     f'title="H={ent:.3f}">{_e(tok)}</span>')
    meta = (f"step {rec.get('step', 0) + 1} &middot; {_e(rec.get('dataset'))} &middot; {_e(rec.get('example_id'))} "
            f"&middot; gold <b>{_e(rec.get('label'))}</b> &middot; reward {_fmt(rec.get('reward'))} &middot; "
            f"{'correct' if rec.get('correct') else 'wrong'} &middot; finish {_e(rec.get('finish_reason'))}"
            + (" &middot; <b>prompt truncated</b>" if rec.get("prompt_truncated") else ""))
    return f'<div class="sample"><div class="meta">{meta}</div><div class="tokens">{"".join(spans)}</div></div>'


def _legend(stage_names: Sequence[str]) -> str:
    items = [f'<span><i class="sw" style="background:{STAGE_COLORS[k % len(STAGE_COLORS)]}"></i>{_e(n)}</span>'
             for k, n in enumerate(stage_names)]
    items.append(f'<span><i class="sw" style="background:{OUTSIDE_COLOR}"></i>outside any stage</span>')
    items.append('<span><i class="sw" style="background:rgba(255,140,0,0.6)"></i>entropy, from the lowest '
                 '(white) to the highest of the sample</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _input_counts(rows: Sequence[dict]) -> str:
    """Posts cut to fit the prompt budget and answers cut at max_new_tokens, over all steps."""
    cut = [_num(r.get("prompts_truncated")) for r in rows]
    resp = [_num(r.get("truncated_responses")) for r in rows]
    parts = []
    if any(v is not None for v in cut):
        parts.append(f"Training prompts cut to fit the budget: {int(sum(v or 0 for v in cut))}.")
    if any(v is not None for v in resp):
        parts.append(f"Share of completions cut at max_new_tokens: {sum(v or 0 for v in resp) / len(rows):.0%}.")
    return (" " + " ".join(parts)) if parts else ""


def render_html(title: str, rows: Sequence[dict], samples: Sequence[dict], ev: Optional[dict] = None,
                stage_names: Sequence[str] = (), max_samples: int = 12) -> str:
    """The whole report page as one string."""
    names = list(stage_names) or (samples[0]["stage_names"] if samples else
                                  [k.split("/", 1)[1] for k in _keys(rows, "rollout_stage_entropy/")])
    charts = "".join(_chart_html(t, s) for t, s in chart_specs(rows, names)) + _time_chart(rows)
    shown = list(samples)[-max_samples:]
    sample_part = (_legend(names) + "".join(sample_html(r) for r in shown)) if shown else \
        "<p>Sample completions: not recorded.</p>"
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>crpo-ray report: {_e(title)}</h1><p>{len(rows)} logged steps, {len(samples)} recorded samples."
            f"{_input_counts(rows)}</p>"
            f"<h2>Evaluation</h2>{eval_table_html(ev, rows)}"
            f"<h2>Training curves</h2><div class=\"charts\">{charts}</div>"
            f"<h2>Sample completions (last {len(shown)})</h2>{sample_part}</body></html>")


def build_report(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """Read RUN_DIR (metrics.jsonl, samples.jsonl, eval.json) and write report.html; returns its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory '{run}' does not exist")
    rows = read_jsonl(run / "metrics.jsonl")
    if not rows:
        raise FileNotFoundError(f"'{run}': no metrics.jsonl with any step (is this a crpo-ray run directory?)")
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8")) if (run / "eval.json").is_file() else None
    page = render_html(run.name, rows, read_jsonl(run / "samples.jsonl"), ev)
    target = Path(out) if out else run / "report.html"
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
