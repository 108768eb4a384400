"""The crpo-ray command line: one error line and exit 2 on bad input."""

import json
import subprocess
import sys

from conftest import REPO

CLI = [sys.executable, "-m", "crpo_ray.cli"]


def run(*args, cwd=REPO):
    return subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_check_config_prints_resolved_tree():
    r = run("check-config", "--config", "configs/tiny-cpu.yaml", "rollout.group_size=6")
    assert r.returncode == 0, r.stderr
    assert "group_size: 6" in r.stdout and "stimulus" in r.stdout


def test_bad_config_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lrr: 0.1\n")
    for args in (("check-config", "--config", str(bad)), ("train", "--config", str(bad)),
                 ("data", "--config", "configs/tiny-cpu.yaml", "rollout.temperature=hot")):
        r = run(*args)
        assert r.returncode == 2
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("crpo-ray: error: "), r.stderr
    assert "learner.lrr" in run("check-config", "--config", str(bad)).stderr


def test_bad_data_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    broken = REPO / "tests" / "fixtures" / "broken-mental-r1"
    cfg.write_text(f"data:\n  train:\n    - {{format: mental_r1, root: {broken}, split: test, datasets: [FieldCount]}}\n")
    r = run("data", "--config", str(cfg))
    assert r.returncode == 2 and "FieldCount/test_clean.csv: row 2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("data", "--config", str(cfg), "data.strict=false", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["train"]["skipped"] == 1 and report["train"]["loaded"] == 2


def test_data_report_for_default_config():
    r = run("data", "--config", "configs/tiny-cpu.yaml")
    assert r.returncode == 0, r.stderr
    assert "[train] 192 examples, 0 unmapped labels" in r.stdout
    assert "dreaddit:" in r.stdout and "w = sqrt(w_class * w_dataset)" in r.stdout


def test_build_tiny_model(tmp_path):
    r = run("build-tiny-model", str(tmp_path / "m"), "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_generate_prints_stages(tiny_model_dir):
    r = run("generate", "--model", str(tiny_model_dir), "--config", "configs/tiny-cpu.yaml", "--num", "2",
            "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("=== mental_r1:") == 2 and r.stdout.count("[mental_state]") == 2


def test_eval_json(tiny_model_dir, tmp_path):
    r = run("eval", "--model", str(tiny_model_dir), "--datasets", "mental-r1", "--max-samples", "1", "--json",
            "--config", "configs/tiny-cpu.yaml", "rollout.max_new_tokens=8", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert sorted(result["datasets"]) == ["DATD", "DepSeverity", "Dreaddit", "FIG", "LID", "LT-EDI", "RSD", "SDCNL"]
    # a random model never closes an <answer> in 8 tokens: every answer is unparseable, counted as wrong
    assert result["unparseable"] == 8 and result["mean_weighted_f1"] == 0.0
    assert json.loads((tmp_path / "eval.json").read_text()) == result
