"""End to end through the CLI on an embedded Ray: eval of a foreign model, ablate, report."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from chromium_check import CHROMIUM, image_stats, open_page
from conftest import REPO
from crpo_ray.ablation import config_differences

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "crpo_ray.cli"]


def _cli(args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own
    return subprocess.run(CLI + args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _foreign_model(path, tiny_model_dir):
    """A random GPT-2 (never trained with crpo-ray) whose tokenizer has no chat template."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=2048, n_embd=32, n_layer=1, n_head=2,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_eval_foreign_model_without_chat_template(tmp_path, tiny_model_dir):
    from crpo_ray.config import DataSourceConfig, load_config
    from crpo_ray.data import load_sources
    from crpo_ray.prompts import TRUNCATION_MARK, render_prompt, resolve_system_prompt

    model = tmp_path / "gpt2-random"
    tok = _foreign_model(model, tiny_model_dir)
    assert tok.chat_template is None
    cfg = load_config(REPO / "configs/tiny-cpu.yaml")
    system = resolve_system_prompt(cfg.prompt.system_prompt, [(s.name, s.description) for s in cfg.prompt.stages])
    table, _ = load_sources([DataSourceConfig(format="mental_r1", root=str(REPO / "data/mental-r1"), split="test")],
                            strict=True, fix_text=cfg.data.fix_mojibake)
    seen, rows = {}, []
    for row in table.to_pylist():  # what --max-samples 2 evaluates: the first 2 of each dataset
        if seen.setdefault(row["dataset"], 0) < 2:
            seen[row["dataset"]] += 1
            rows.append(row)

    def render(row, budget):
        return render_prompt(tok, row["instruction"], row["text"], system_prompt=system,
                             stage_names=cfg.stage_names, max_prompt_tokens=budget)

    fixed = max(len(render(dict(r, text=TRUNCATION_MARK), 100_000).token_ids) for r in rows)
    budget = fixed + 40  # the template fits; posts over about 40 tokens are cut
    assert "### Post" in render(rows[0], budget).text  # the plain prompt format
    truncated = sum(render(r, budget).truncated for r in rows)
    out = tmp_path / "eval"
    r = _cli(["eval", "--model", str(model), "--config", "configs/tiny-cpu.yaml", "--datasets", "mental-r1",
              "--max-samples", "2", "--out", str(out), "rollout.max_new_tokens=6",
              f"prompt.max_prompt_tokens={budget}"])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "eval.json").read_text())
    assert (out / "eval.md").read_text().startswith("Model: ") and image_stats(out / "eval.png")["colors"] > 3
    assert res["n"] == len(rows) == sum(s["n"] for s in res["datasets"].values()) and len(res["datasets"]) > 1
    for s in res["datasets"].values():  # every answer is in the confusion matrix, none dropped
        assert sum(map(sum, s["confusion"]["matrix"])) == s["n"] == 2
        assert s["unparseable"] == sum(row[-1] for row in s["confusion"]["matrix"]) == sum(
            s["unparseable_reasons"].values())
        assert s["baselines"]["majority"]["weighted_f1"] >= 0
    assert truncated > 0 and res["prompts_truncated"] == truncated  # posts over the budget are counted


def test_ablate_then_report(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "ablation"
    r = _cli(["ablate", "--config", "configs/tiny-cpu.yaml", "--out", str(out), "run.total_steps=2",
              f"run.output_dir={runs}", "run.eval_max_examples=2", "rollout.max_new_tokens=8", "rollout.prompts_per_step=2",
              "run.name=abl"],
             timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "ablation.json").read_text())
    assert (out / "ablation.md").is_file() and image_stats(out / "ablation.png")["colors"] > 3
    cfgs = {arm: yaml.safe_load((runs / f"abl-{arm}" / "config.yaml").read_text()) for arm in ("grpo", "crpo")}
    assert set(config_differences(cfgs["grpo"], cfgs["crpo"])) == {"run.name", "algorithm.name", "algorithm.schedule"}
    assert cfgs["grpo"]["run"]["seed"] == cfgs["crpo"]["run"]["seed"]
    assert all(b == 0 for b in summary["runs"]["grpo"]["stage_betas"])
    assert any(b != 0 for b in summary["runs"]["crpo"]["stage_betas"])
    for arm in ("grpo", "crpo"):
        rows = [json.loads(x) for x in (runs / f"abl-{arm}" / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows] == [0, 1] and "samples" not in rows[0]
        assert summary["runs"][arm]["reward_mean"] == pytest.approx(sum(x["reward"] for x in rows) / 2)
        assert "eval_f1" in rows[-1]
    samples = (runs / "abl-crpo" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2  # logging.log_completions (2) per step

    r = _cli(["report", str(runs / "abl-crpo")])
    assert r.returncode == 0, r.stderr[-3000:]
    page = runs / "abl-crpo" / "report.html"
    assert "Staleness" in page.read_text() and "Staleness: not recorded" not in page.read_text()  # sync: all 0
    if CHROMIUM is None:
        assert not os.environ.get("CRPO_REQUIRE_CHROMIUM"), "CRPO_REQUIRE_CHROMIUM=1 but no chromium"
        pytest.skip("no chromium: `make test` installs it (Debian, as root)")
    got = open_page(page, tmp_path / "report.png")
    assert got["console"] == [] and got["dom"].count('class="sample"') == 4
    assert image_stats(got["screenshot"])["colors"] > 100
