"""Markdown from the result JSON: every figure against its target, and the README section.

``python -m benchmarks.report`` regenerates the section of benchmarks/README.md between
the BEGIN/END markers from every ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

BEGIN, END = "<!-- BEGIN GENERATED RESULTS -->", "<!-- END GENERATED RESULTS -->"


def _f(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None or v != v else fmt.format(v)


def figures(res: dict) -> List[tuple]:
    """(benchmark, figure, value, target, verdict) rows."""
    out = []
    for r in res.get("weight_sync", {}).get("rows", []):
        name = f"weight sync, {r['model']} ({r['params'] / 1e6:.1f}M), {r['workers']} worker(s)"
        if "skipped" in r:
            out.append((name, "sync / floor", "skipped: " + r["skipped"], "<= 2.0", "N/A"))
        else:
            packed = r.get("packed_layout")
            extra = f"; packed layout {_f(packed['ratio'])}x" if packed else ""
            each = r.get("sync_s_each") or []
            spread = f" (each {min(each) * 1e3:.1f}-{max(each) * 1e3:.1f})" if len(each) > 1 else ""
            out.append((name, f"sync {r['sync_s'] * 1e3:.1f} ms{spread} / floor {r['floor_s'] * 1e3:.1f} ms{extra}",
                        _f(r["ratio"]) + "x", "<= 2.0x", r["verdict"]))
    for r in res.get("overhead", {}).get("rows", []):
        c = r["crpo"]
        name = f"orchestration, {r['config']} ({r['model']}, {r['params'] / 1e6:.1f}M, {r['algorithm']})"
        out.append((name, f"overhead / step ({c['step_s']:.2f} s step)", _f(100 * c["overhead_fraction"], "{:.1f}") + "%",
                    "<= 5%", c["verdict_overhead"]))
        out.append((name, f"step / bare-compute floor ({r['floor']['floor_s']:.2f} s, {r['floor']['threads']} thread)",
                    _f(r["step_over_floor"]) + "x", "<= 1.2x (sync)", r["verdict_floor"]))
    for r in res.get("data_plane", {}).get("rows", []):
        name = f"data plane, {r['rows']} rows x {r['response_len']} tokens ({r['bytes'] / 2**20:.1f} MiB)"
        out.append((name, f"(put+get) / memcpy; get alone {_f(r['get_over_memcpy'])}x; zero-copy read: "
                          f"{'yes' if r['zero_copy_read'] else 'no'}", _f(r["move_over_memcpy"]) + "x", "report", "-"))
    t = res.get("trl", {})
    if "skipped" in t:
        out.append(("vs TRL GRPOTrainer", "crpo-ray / TRL samples/s", "skipped: " + t["skipped"], ">= 3x (sync)", "N/A"))
    elif t:
        out.append((f"vs TRL GRPOTrainer ({t['model']}, {t['params'] / 1e6:.1f}M)",
                    f"samples/s crpo-ray sync {t['crpo_sync']['samples_per_s']:.2f} / TRL {t['trl']['samples_per_s']:.2f}",
                    _f(t["ratio_sync"]) + "x", ">= 3x (sync)", t["verdict_sync"]))
        if "ratio_async" in t:
            out.append(("vs TRL GRPOTrainer", f"samples/s crpo-ray async {t['crpo_async']['samples_per_s']:.2f} / TRL "
                        f"{t['trl']['samples_per_s']:.2f}", _f(t["ratio_async"]) + "x", "> sync and >= 3x",
                        t["verdict_async"]))
        else:
            out.append(("vs TRL GRPOTrainer", "async mode", "not measured", "> sync", "N/A"))
    m = res.get("memory", {})
    if "skipped" in m:
        out.append(("learner memory", "2-worker / 1-worker peak RSS", "skipped: " + m["skipped"], "<= 0.65", "N/A"))
    elif m:
        out.append((f"learner memory, {m['model']} ({m['params'] / 1e6:.1f}M)",
                    f"peak RSS per worker: 2 workers {m['two']['peak_rss_gib']:.2f} GiB / 1 worker "
                    f"{m['one']['peak_rss_gib']:.2f} GiB", _f(m["ratio"]) + "x", "<= 0.65x", m["verdict"]))
    g = res.get("gpu", {})
    if "skipped" in g:
        out.append(("GPU mode (vllm)", "generated tokens/s per GPU, learner MFU", "skipped: " + g["skipped"], "report", "-"))
    elif g:
        out.append(("GPU mode (vllm)", f"generated tokens/s per GPU; learner MFU (lower bound)",
                    f"{g['generated_tokens_per_s_per_gpu']:.0f}; {100 * g['learner_mfu_lower_bound']:.1f}%", "report", "-"))
    return out


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"## {env['machine_key']} ({res['suite']} suite)", "",
             f"{env['cpu']}, {env['cores']} cores, {env['mem_total_gib']:.0f} GiB; GPU: {env['gpu'] or 'none'}; "
             f"torch {env['versions']['torch']}, ray {env['versions']['ray']}, transformers "
             f"{env['versions']['transformers']}, trl {env['versions']['trl']}; load average at start "
             f"{env['loadavg_at_start'][0]:.1f}; {env['time_utc']}; suite wall time {res['wall_s'] / 60:.1f} min.",
             "", f"Command: `{res['command']}`", ""]
    if res.get("note"):
        lines += [res["note"], ""]
    lines += ["| benchmark | figure | value | target | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in figures(res)]
    t = res.get("trl", {})
    if t and "skipped" not in t:
        lines += ["", "Where each spends its step (median seconds, warm-up step skipped):", "",
                  "| phase | TRL | | phase | crpo-ray sync |", "|---|---|---|---|---|"]
        tp = list(t["trl"]["phases_s"].items())
        cp = [(k, v) for k, v in t["crpo_sync"]["phases_s"].items() if v]
        for i in range(max(len(tp), len(cp))):
            a = tp[i] if i < len(tp) else ("", None)
            b = cp[i] if i < len(cp) else ("", None)
            lines.append(f"| {a[0]} | {_f(a[1], '{:.3f}') if a[0] else ''} | | {b[0]} | "
                         f"{_f(b[1], '{:.3f}') if b[0] else ''} |")
        lines += ["", f"TRL step {t['trl']['step_s']:.2f} s ({t['trl']['threads']} threads, completion length "
                      f"{_f(t['trl']['completion_len'], '{:.1f}')}); crpo-ray step {t['crpo_sync']['step_s']:.2f} s "
                      f"(completion length {_f(t['crpo_sync']['completion_len'], '{:.1f}')})"
                      + (f"; crpo-ray async step {t['crpo_async']['step_s']:.2f} s" if "crpo_async" in t else "")
                      + ".", "",
                  "Settings that could not be matched:", ""] + [f"- {u}" for u in t["unmatched"]]
    from benchmarks.run import closing_note  # recomputed: a pure function of the results

    lines += ["", "### Closing note", "", closing_note(res)]
    if res.get("plots"):
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in res["plots"]]
    return "\n".join(lines) + "\n"


def update_readme(results_dir: Path, readme: Path) -> None:
    parts = []
    for f in sorted(results_dir.glob("*.json")):
        res = json.loads(f.read_text())
        f.with_suffix(".md").write_text(markdown(res))
        if res.get("suite") != "full":
            continue
        md = markdown(res).replace("](", f"](results/")
        parts.append(md)
    text = readme.read_text() if readme.exists() else ""
    block = f"{BEGIN}\n\n" + ("\n".join(parts) if parts else "No full-suite results yet.\n") + f"\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    update_readme(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "results", root / "README.md")
