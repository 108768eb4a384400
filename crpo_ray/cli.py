"""``crpo-ray`` command line.

Bad input (config, data, model files) ends with one ``crpo-ray: error: ...`` line and
exit status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from crpo_ray.config import ConfigError, load_config, to_dict

EXIT_BAD_INPUT = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rollout.group_size=8")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crpo-ray", description="CRPO training for mental-health assessment on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with CRPO (embedded local Ray, or the cluster under `ray job submit`)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p = sub.add_parser("check-config", help="load, validate and print the resolved config")
    _add_config_args(p)
    p = sub.add_parser("data", help="load the configured train and eval data and report counts")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = sub.add_parser("build-tiny-model", help="build the offline tiny model and tokenizer into a directory")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("eval", help="weighted F1 per dataset of a model's greedy answers (via rollout workers)")
    p.add_argument("--model", required=True, help="a local Hugging Face model directory (or builtin:tiny-qwen3)")
    p.add_argument("--datasets", default=None, help="mental-r1 | imhi | all (default: the config's data.eval)")
    p.add_argument("--max-samples", type=int, default=0, help="per dataset; 0: all")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=None,
                   help="write eval.json, eval.md, eval.png here (default: <run.output_dir>/eval-<model name>)")
    _add_config_args(p)
    _add_report_parsers(sub)
    p = sub.add_parser("generate", help="print staged reasoning for a few posts")
    p.add_argument("--model", required=True)
    p.add_argument("--num", type=int, default=3, help="how many posts")
    p.add_argument("--max-new-tokens", type=int, default=256)
    _add_config_args(p)
    return parser


def _cmd_check_config(args) -> int:
    import yaml

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _load_data(cfg):
    from crpo_ray.data import load_sources

    train, train_report = load_sources(cfg.data.train, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    evals, eval_report = load_sources(cfg.data.eval, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    return train, train_report, evals, eval_report


def _cmd_data(args) -> int:
    from crpo_ray.data import class_counts
    from crpo_ray.rewards import balanced_weights

    cfg = load_config(args.config, args.overrides)
    train, train_report, evals, eval_report = _load_data(cfg)
    counts = class_counts(train)
    weights = balanced_weights(counts)
    if args.json:
        print(json.dumps({"train": train_report.as_dict(), "eval": eval_report.as_dict(),
                          "train_counts": counts, "reward_weights": weights}, indent=2))
        return 0
    for title, report in (("train", train_report), ("eval", eval_report)):
        print(f"[{title}] {report.loaded} examples, {report.unmapped} unmapped labels, {report.skipped} skipped rows")
        for line in report.lines():
            print("  " + line)
    print("[reward weights] w = sqrt(w_class * w_dataset)")
    for d in sorted(weights):
        print(f"  {d}: " + ", ".join(f"{c}={w:.3f} (n={counts[d][c]})" for c, w in sorted(weights[d].items())))
    return 0


def _cmd_train(args) -> int:
    from crpo_ray.actors.driver import run_training

    cfg = load_config(args.config, args.overrides)
    metrics = run_training(cfg, resume=args.resume)
    keys = ("step", "reward", "accuracy", "format_ok", "eval_f1", "loss", "time_step", "wall_time")
    print("[crpo-ray] done: " + ", ".join(
        f"{k} {metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"{k} {metrics.get(k)}"
        for k in keys if k in metrics))
    print(f"[crpo-ray] run directory: {metrics['run_dir']}")
    print(f"[crpo-ray] final checkpoint: {metrics['checkpoint']}")
    return 0


def _cmd_build_tiny(args) -> int:
    from crpo_ray.tiny import build_tiny_model

    out = build_tiny_model(args.out_dir, seed=args.seed)
    print(out)
    return 0


def _with_model(args):
    cfg = load_config(args.config, args.overrides + [f"model.path={args.model}"])
    if getattr(args, "datasets", None):
        import dataclasses

        from crpo_ray.actors.driver import eval_sources

        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval=eval_sources(args.datasets)))
    return cfg


def _cmd_eval(args) -> int:
    from pathlib import Path

    from crpo_ray.actors.driver import run_eval
    from crpo_ray.evaluation import to_markdown
    from crpo_ray.plots import eval_chart

    if args.max_samples < 0:
        raise ValueError(f"--max-samples {args.max_samples}: expected 0 (all) or a positive number")
    cfg = _with_model(args)
    result = run_eval(cfg, args.max_samples)
    name = args.model.split(":")[-1].rstrip("/").split("/")[-1] or "model"
    out = Path(args.out) if args.out else Path(cfg.run.output_dir) / f"eval-{name}"
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(result)
    for fname, data in (("eval.json", json.dumps(result, indent=2).encode()), ("eval.md", md.encode()),
                        ("eval.png", eval_chart(result))):
        (out / f".{fname}.tmp").write_bytes(data)
        (out / f".{fname}.tmp").replace(out / fname)
    print(json.dumps(result, indent=2) if args.json else md, end="" if not args.json else "\n")
    print(f"[crpo-ray] wrote {out / 'eval.json'}, eval.md, eval.png", file=sys.stderr)
    return 0


def _cmd_generate(args) -> int:
    from crpo_ray.data import load_sources
    from crpo_ray.engines import HFEngine
    from crpo_ray.prompts import render_prompt, resolve_system_prompt
    from crpo_ray.stages import stage_texts
    from crpo_ray.tiny import resolve_model_path

    cfg = _with_model(args)
    sources = cfg.data.eval or cfg.data.train
    table, _ = load_sources(sources, strict=cfg.data.strict, fix_text=cfg.data.fix_mojibake)
    engine = HFEngine(str(resolve_model_path(cfg.model.path, cfg.model.tiny_cache_dir, cfg.model.tiny_seed)),
                      cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.attn_implementation)
    system = resolve_system_prompt(cfg.prompt.system_prompt, [(s.name, s.description) for s in cfg.prompt.stages])
    for row in table.slice(0, args.num).to_pylist():
        rp = render_prompt(engine.tokenizer, row["instruction"], row["text"], system_prompt=system,
                           stage_names=cfg.stage_names, max_prompt_tokens=cfg.prompt.max_prompt_tokens)
        out = engine.generate([rp.token_ids], 1, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=args.max_new_tokens, greedy=True)
        completion = out.completions[0]
        print(f"=== {row['example_id']} (gold: {row['label']})\n{row['text'][:300]}")
        for name, text in zip(cfg.stage_names, stage_texts(completion, cfg.stage_names)):
            print(f"  [{name}] {text.strip()[:200] or '-'}")
        answer = completion.split("<answer>")[-1].split("</answer>")[0].strip() if "<answer>" in completion else None
        print(f"  [answer] {answer if answer is not None else '<none>'} ({out.finish_reasons[0]})")
    return 0


COMMANDS = {"train": _cmd_train, "check-config": _cmd_check_config, "data": _cmd_data,
            "build-tiny-model": _cmd_build_tiny, "eval": _cmd_eval, "generate": _cmd_generate}


# ---------------------------------------------------------------- report and ablate (issue 5)


def _add_report_parsers(sub) -> None:
    p = sub.add_parser("report", help="one static HTML page for a run: curves, eval table, staged samples")
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    p = sub.add_parser("ablate", help="GRPO (every stage beta 0) vs CRPO from the same seed and config")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="where ablation.{json,md,png} go (default: <output_dir>/<name>-ablation)")


def _cmd_report(args) -> int:
    from crpo_ray.report import build_report

    print(build_report(args.run_dir, args.out))
    return 0


def _cmd_ablate(args) -> int:
    from crpo_ray.actors.ablate import run_ablation

    summary = run_ablation(args.config, args.overrides, args.out)
    from crpo_ray.ablation import to_markdown

    print(to_markdown(summary), end="")
    print(f"[crpo-ray] wrote {summary['out_dir']}/ablation.json, ablation.md, ablation.png")
    return 0


COMMANDS.update({"report": _cmd_report, "ablate": _cmd_ablate})


def main(argv: Optional[List[str]] = None) -> int:
    from crpo_ray.data import DataError

    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"crpo-ray: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
