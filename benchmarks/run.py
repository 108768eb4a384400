"""Run the benchmark suite: ``python -m benchmarks.run --suite full|smoke --out benchmarks/results``.

Writes ``<out>/<machine-key>[-smoke].json``, ``.md`` and PNG plots; the full suite into
benchmarks/results also regenerates the README section (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common
from benchmarks.common import median

SUITES = {
    "full": dict(sync_sizes=["tiny", "100m", "500m"], sync_workers=[1, 2], sync_repeats=5,
                 overhead=[("small", "2m", 32, "grpo"), ("larger", "10m", 32, "crpo")], steps=6,
                 shapes=[(64, 512, 1024), (512, 512, 2048)], trl=True, memory="100m"),
    "smoke": dict(sync_sizes=["tiny"], sync_workers=[1], sync_repeats=2, overhead=[("small", "tiny", 8, "grpo")],
                  steps=2, shapes=[(16, 64, 64)], trl=False, memory="tiny"),
}


def _guard(res: dict, key: str, fn):
    """Run one benchmark; a failure is recorded and the rest of the suite still runs."""
    t = time.perf_counter()
    try:
        res[key] = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the results, never hidden
        traceback.print_exc()
        res[key] = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    res.setdefault("bench_wall_s", {})[key] = time.perf_counter() - t


def _faulted(r: dict) -> str:
    """How many timed puts faulted in (nearly) every page of the buffer, and what that cost."""
    faults, puts = r.get("put_page_faults_each"), r.get("put_s_each")
    if not faults or not puts:
        return ""
    whole = [f > 0.5 * r["bytes"] / resource.getpagesize() for f in faults]
    text = f"; {sum(whole)} of {len(whole)} puts page-faulted the whole buffer"
    if 0 < sum(whole) < len(whole):
        slow = median([p for p, w in zip(puts, whole) if w])
        fast = median([p for p, w in zip(puts, whole) if not w])
        text += f" ({slow * 1e3:.0f} ms each against {fast * 1e3:.0f} ms for the others)"
    return text


def closing_note(res: dict) -> str:
    from benchmarks.report import figures

    lines = [f"- {a}: {b} = **{c}** (target {d}): {e}" for a, b, c, d, e in figures(res)]
    why = []
    rows = [r for r in res.get("weight_sync", {}).get("rows", []) if "ratio" in r]
    big = [r for r in rows if r["bytes"] > 50 * 2**20]
    if any(r["verdict"] == "MISS" for r in rows):
        parts = ", ".join(f"{r['model']} x{r['workers']}: put {r['put_s'] * 1e3:.0f} / load {r['load_s'] * 1e3:.0f} ms "
                          f"(worker's own load {r['worker_load_s'] * 1e3:.0f} ms){_faulted(r)}" for r in big)
        why.append("Weight sync: small models are bound by fixed per-call latency (Ray RPC and object creation, "
                   "milliseconds), not bytes. For large models the state dict's tensors go into the object store "
                   "with one copy (the put), as the floor counts; the rest is the workers' loads, which copy into "
                   "their engine's parameters below memcpy bandwidth on a 2-core machine"
                   + (f" ({parts})" if parts else "") + ". Some puts land in object-store memory that was just "
                   "allocated: they pay a page fault per page and run slower than puts into pages touched before "
                   "(figures above), so single syncs vary. Closing it: one persistent object-store "
                   "buffer reused by every sync (no fresh pages), loading in place on the rollout side (engine "
                   "parameters backed by that buffer), and more cores than actors.")
    for r in res.get("overhead", {}).get("rows", []):
        if r["verdict_floor"] == "MISS" or r["crpo"]["verdict_overhead"] == "MISS":
            p = r["crpo"]["phases_s"]
            eng = r["floor"].get("engine_generate_s")
            eng_txt = (f"; the same engine run in the benchmark's own process takes {eng:.2f} s, so the "
                       f"{p['time_generate'] - eng:+.2f} s between that and crpo-ray's generate is the cost of running "
                       "inside Ray actors, whose background work (Ray Train's controller actors, the fleet, the "
                       "dashboard agent) shares the cores") if eng else ""
            why.append(f"Step vs floor ({r['config']}): crpo-ray generate {p['time_generate']:.2f} s vs plain "
                       f"{r['floor']['generate_s']:.2f} s{eng_txt}; train {p['time_train']:.2f} s vs plain "
                       f"{r['floor']['train_s']:.2f} s (crpo-ray also computes full-vocabulary entropies and runs "
                       f"under FSDP2), sync {p['time_sync']:.2f} s, score {p['time_score']:.2f} s, overhead "
                       f"{p['time_overhead']:.2f} s.")
    t = res.get("trl", {})
    if t and "skipped" not in t and (t["verdict_sync"] == "MISS" or t.get("verdict_async") == "MISS"):
        tp, cp = t["trl"]["phases_s"], t["crpo_sync"]["phases_s"]
        why.append(f"vs TRL: both are compute-bound here (TRL generate {tp['generate']:.2f} s, rest of its step "
                   f"{t['trl']['step_s'] - tp['generate']:.2f} s; crpo-ray sync generate {cp['time_generate']:.2f} s, "
                   f"train {cp['time_train']:.2f} s, overhead {cp['time_overhead']:.2f} s). With the same threads "
                   f"({t['trl']['threads']}) for each phase, the same work cannot run 3x faster: the 3x target assumes "
                   "TRL far from its compute floor, which it is not for a model this small on CPU (see the floor "
                   "ratio above). Async mode overlaps generation and training but must split the cores between "
                   "them, so on 2 cores it gains little; it pays off where rollout and learner have their own "
                   "devices.")
    m = res.get("memory", {})
    if m and "ratio" in m and m["verdict"] == "MISS":
        why.append("Learner memory: every rank loads the full model before fully_shard, and the process baseline "
                   f"(torch + transformers, {m['process_baseline_gib']:.2f} GiB) does not shrink with sharding; "
                   "loading on the meta device and materializing only the local shard would close it.")
    if res.get("trl", {}).get("skipped"):
        why.append(f"TRL comparison not run: {res['trl']['skipped']}.")
    return "\n".join(lines + ([""] + ["- " + w for w in why] if why else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run")
    ap.add_argument("--suite", choices=sorted(SUITES), default="full")
    ap.add_argument("--out", default=str(common.REPO / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    args = ap.parse_args(argv)
    os.chdir(common.REPO)  # config data paths are relative to the repository
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec, out = SUITES[args.suite], Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = common.CACHE / f"work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res = {"suite": args.suite, "environment": common.environment(), "note": args.note,
           "command": f"python -m benchmarks.run --suite {args.suite}" + (f" --out {args.out}" if args.out else "")}
    from benchmarks import data_plane, gpu, memory, overhead, trl_compare, weight_sync

    _guard(res, "memory", lambda: memory.run(spec["memory"], work))  # before Ray: spawned processes only
    common.init_ray(max(os.cpu_count() or 1, 6))
    _guard(res, "weight_sync", lambda: weight_sync.run(spec["sync_sizes"], spec["sync_workers"], spec["sync_repeats"]))
    _guard(res, "data_plane", lambda: data_plane.run(spec["shapes"]))
    _guard(res, "overhead", lambda: overhead.run(spec["overhead"], work, spec["steps"]))
    if spec["trl"]:
        def trl():
            row = res["overhead"]["rows"][0]
            cfg = overhead.bench_config(row["model"], "trl", work, spec["steps"], row["max_new_tokens"], row["algorithm"])
            acfg = overhead.bench_config(row["model"], f"trl-async-{int(time.time())}", work, spec["steps"],
                                         row["max_new_tokens"], row["algorithm"], mode="async")
            return trl_compare.run(row, cfg, work, os.cpu_count() or 1, crpo_async=overhead.run_crpo(acfg))
        _guard(res, "trl", trl)
    else:
        res["trl"] = {"skipped": f"not part of the {args.suite} suite"}
    _guard(res, "gpu", lambda: gpu.run(work))
    import ray

    ray.shutdown()
    res["wall_s"] = time.perf_counter() - start
    key = res["environment"]["machine_key"] + ("" if args.suite == "full" else f"-{args.suite}")
    res["plots"] = _plots(res, out, key)
    res["closing_note"] = closing_note(res)
    (out / f"{key}.json").write_text(json.dumps(_finite(res), indent=1))
    from benchmarks.report import markdown, update_readme

    (out / f"{key}.md").write_text(markdown(res))
    if args.suite == "full" and out == (common.REPO / "benchmarks" / "results").resolve():
        update_readme(out, common.REPO / "benchmarks" / "README.md")
    shutil.rmtree(work, ignore_errors=True)
    print(f"[bench] wrote {out / key}.json, .md and {len(res['plots'])} plots in {res['wall_s'] / 60:.1f} min")
    return 0


def _plots(res: dict, out: Path, key: str) -> list:
    from benchmarks import plots

    made = []
    rows = res.get("overhead", {}).get("rows", [])
    for name, fn in (("timeline", lambda p: plots.timeline(rows[-1]["crpo"]["timeline"],
                                                           f"crpo-ray sync, {rows[-1]['config']} config", p)),
                     ("sync", lambda p: plots.sync_vs_size(res["weight_sync"]["rows"], p)),
                     ("trl", lambda p: plots.throughput(res["trl"], p))):
        try:
            made.append(str(fn(out / f"{key}-{name}.png").name))
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            print(f"[bench] plot {name} skipped: {exc!r}")
    return made


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
