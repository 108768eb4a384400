"""The HTML run report: content from metrics/samples, and rendering in headless Chromium."""

import os
import json
import re

import pyarrow as pa
import pytest

from chromium_check import CHROMIUM, image_stats, open_page
from crpo_ray.report import STAGE_COLORS, build_report, render_html, sample_records

STAGES = ["observe", "appraise", "relate", "weigh", "conclude"]
# CI (.ci/run) sets CRPO_REQUIRE_CHROMIUM=1: there a missing browser fails the test instead of skipping it.
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CRPO_REQUIRE_CHROMIUM"),
                                    reason="no chromium: `make test` installs it (Debian, as root)")


def _rows(n=4, staleness=False):
    rows = []
    for i in range(n):
        r = {"step": i, "reward": 0.1 * i, "reward_format": 0.5, "reward_accuracy": -0.2 + 0.1 * i,
             "reward_uncertainty": 0.05, "accuracy": 0.25 * i, "format_ok": 0.5, "kl": 0.01 * i,
             "clip_frac": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "time_generate": 2.0,
             "time_score": 0.2, "time_train": 1.0, "time_sync": 0.1, "time_overhead": 0.05, "time_step": 3.35, "prompts_truncated": 1,
             **{f"rollout_stage_entropy/{s}": 1.0 + 0.1 * k + 0.01 * i for k, s in enumerate(STAGES)},
             **{f"stage_entropy/{k}": 1.1 + 0.1 * k for k in range(5)}}
        if staleness:
            r["staleness_mean"] = 0.5 * i
        rows.append(r)
    rows[-1].update({"eval_f1": 0.31, "eval_f1/Dreaddit": 0.42, "eval_f1/DATD": 0.2, "eval_unparseable": 3})
    return rows


def _samples(tokenizer):
    text = "<observe>calm post</observe><appraise>worry</appraise><answer>yes</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids)
    table = pa.table({
        "example_id": ["ex:1", "ex:2"], "dataset": ["Dreaddit"] * 2, "label": ["yes", "no"],
        "reward": [1.5, -0.5], "correct": [True, False], "finish_reason": ["stop", "length"],
        "prompt_truncated": [False, True], "response_ids": [ids, ids[: n // 2]],
        "entropies": [[0.1 * (i % 7) for i in range(n)], [2.0] * (n // 2)],
        "stage_ids": [[min(4, i * 5 // n) for i in range(n)], [-1] * (n // 2)],
    })
    return sample_records(table, STAGES, tokenizer, step=3, k=2)


def test_sample_records_keep_tokens_entropies_and_stages(tiny_tokenizer):
    recs = _samples(tiny_tokenizer)
    assert len(recs) == 2 and recs[0]["step"] == 3 and recs[1]["prompt_truncated"] is True
    assert "".join(recs[0]["tokens"]).startswith("<observe>calm post")
    assert len(recs[0]["tokens"]) == len(recs[0]["entropies"]) == len(recs[0]["stage_ids"])
    assert json.loads(json.dumps(recs)) == recs


def test_html_is_self_contained_and_marks_missing_charts(tiny_tokenizer):
    page = render_html("run-x", _rows(), _samples(tiny_tokenizer))
    assert "Staleness: not recorded" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 7 and all(s.startswith("data:image/png;base64,") for s in srcs)  # 6 curves + time
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count('class="sample"') == 2 and f"border-color:{STAGE_COLORS[4]}" in page
    assert "0.4200" in page and "prompt truncated" in page and "cut to fit the budget: 4." in page
    with_staleness = render_html("run-x", _rows(staleness=True), [])
    assert "Staleness: not recorded" not in with_staleness and "Sample completions: not recorded" in with_staleness


def test_build_report_reads_run_dir_and_rejects_non_runs(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()) + '{"torn')
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _samples(tiny_tokenizer)))
    out = build_report(tmp_path)
    assert out == tmp_path / "report.html" and "4 logged steps, 2 recorded samples" in out.read_text()


@NEEDS_CHROMIUM
def test_report_renders_in_headless_chromium(tmp_path, tiny_tokenizer):
    bad = tmp_path / "bad.html"  # negative control: the checker must see both problems
    bad.write_text("<html><body><p>x</p><script>console.error('deliberate'); notDefined();</script></body></html>")
    got = open_page(bad, tmp_path / "bad.png", 400, 300)
    assert any("deliberate" in m for m in got["console"]) and any("notDefined" in m for m in got["console"])

    page = tmp_path / "report.html"
    page.write_text(render_html("run-x", _rows(), _samples(tiny_tokenizer)))
    got = open_page(page, tmp_path / "report.png")
    assert got["console"] == []
    assert got["dom"].count("<img") == 7 and got["dom"].count('class="tok"') > 10
    stats = image_stats(got["screenshot"])
    assert stats["width"] == 1300 and stats["colors"] > 100 and stats["std"] > 10


def test_report_and_ablate_bad_input_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    for args in (["report", str(tmp_path / "missing")], ["report", str(tmp_path)],
                 ["ablate", "--config", "configs/tiny-cpu-grpo.yaml", f"run.output_dir={tmp_path}"]):
        r = subprocess.run([sys.executable, "-m", "crpo_ray.cli", *args], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("crpo-ray: error: "), r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
