"""Evaluation report: weighted F1 against scikit-learn on fixed predictions, baselines, failure counts."""

import json
import math

import pytest
from conftest import REPO
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from crpo_ray.ablation import config_differences, ablation_configs, summarize_run, to_markdown as abl_md
from crpo_ray.config import ConfigError, to_dict
from crpo_ray.evaluation import classify_answer, evaluate_rows, majority_baseline, to_markdown, uniform_baseline

LABELS = ["depression", "anxiety", "none"]
# (gold, completion, finish_reason): fixed predictions, including every failure kind.
CASES = [
    ("depression", "<think>x</think><answer>depression</answer>", "stop"),
    ("depression", "<answer>Anxiety, because ...</answer>", "stop"),
    ("anxiety", "<answer>anxiety</answer>", "stop"),
    ("anxiety", "<answer>  </answer>", "stop"),                      # empty
    ("none", "<answer>none</answer>", "stop"),
    ("none", "<answer>bipolar</answer>", "stop"),                    # unknown label
    ("depression", "<think>it was cut", "length"),                   # truncated
    ("none", "no answer tag at all", "stop"),                        # no answer
    ("anxiety", "<answer>**Depression**</answer>", "stop"),
]
# What each completion must be read as (None: unparseable), written out by hand.
EXPECTED_PRED = ["depression", "anxiety", "anxiety", None, "none", None, None, None, "depression"]


def _rows(dataset="D1", truncated_prompts=(7,)):
    return [{"dataset": dataset, "label": g, "label_set": LABELS, "completion": c, "finish_reason": f,
             "prompt_truncated": i in truncated_prompts} for i, (g, c, f) in enumerate(CASES)]


def test_predictions_are_read_as_written_out():
    preds = [classify_answer(c, LABELS, f)[0] for _, c, f in CASES]
    assert preds == EXPECTED_PRED


def test_weighted_f1_and_confusion_match_scikit_learn():
    res = evaluate_rows(_rows())
    s = res["datasets"]["D1"]
    golds = [g for g, _, _ in CASES]
    y_pred = [p if p is not None else "<unparseable>" for p in EXPECTED_PRED]
    want = f1_score(golds, y_pred, labels=LABELS, average="weighted", zero_division=0)
    assert s["weighted_f1"] == pytest.approx(want, abs=1e-12)
    assert 0 < s["weighted_f1"] < 1
    assert s["accuracy"] == pytest.approx(3 / 9)
    cm = sk_confusion(golds, y_pred, labels=LABELS + ["<unparseable>"])[:3].tolist()
    assert s["confusion"]["matrix"] == cm
    assert s["unparseable"] == 4 and s["unparseable_reasons"] == {
        "no_answer": 1, "truncated": 1, "empty": 1, "unknown_label": 1}
    assert s["truncated_responses"] == 1 and s["prompts_truncated"] == 1


def test_mean_over_datasets_and_json_roundtrip():
    rows = _rows("D1") + [dict(r, dataset="D2", completion="<answer>none</answer>") for r in _rows("D2", ())]
    res = evaluate_rows(rows)
    d2 = res["datasets"]["D2"]
    golds = [g for g, _, _ in CASES]
    assert d2["weighted_f1"] == pytest.approx(f1_score(golds, ["none"] * 9, labels=LABELS, average="weighted",
                                                       zero_division=0))
    assert res["mean_weighted_f1"] == pytest.approx((res["datasets"]["D1"]["weighted_f1"] + d2["weighted_f1"]) / 2)
    assert res["unparseable"] == 4 and res["prompts_truncated"] == 1 and res["n"] == 18
    assert json.loads(json.dumps(res)) == res


def test_baselines():
    golds = ["a"] * 6 + ["b"] * 3 + ["c"]
    maj = majority_baseline(golds, ["a", "b", "c"])
    assert maj["label"] == "a" and maj["accuracy"] == pytest.approx(0.6)
    assert maj["weighted_f1"] == pytest.approx(f1_score(golds, ["a"] * 10, average="weighted", zero_division=0))
    uni = uniform_baseline(golds, ["a", "b", "c"], draws=400)
    # E[F1] under uniform guessing is near 1/3 here; a biased guesser would be far off.
    assert 0.2 < uni["weighted_f1"] < 0.45
    assert uniform_baseline(golds, ["a", "b", "c"], draws=400) == uni  # seeded


def test_markdown_shows_baselines_failures_and_confusion():
    md = to_markdown(evaluate_rows(_rows()))
    assert "| D1 | 9 |" in md and "majority F1" in md and "uniform F1" in md
    assert "4 (44%)" in md and "truncated 1" in md and "unknown_label 1" in md
    assert "### Confusion matrix: D1" in md and "| depression | 1 | 1 | 0 | 1 |" in md


def test_ablation_configs_differ_only_in_stage_betas():
    cfgs = ablation_configs(str(REPO / "configs/tiny-cpu.yaml"), ["run.total_steps=2"])
    diff = config_differences(to_dict(cfgs["grpo"]), to_dict(cfgs["crpo"]))
    assert set(diff) == {"run.name", "algorithm.name", "algorithm.schedule"}
    assert cfgs["grpo"].run.seed == cfgs["crpo"].run.seed
    with pytest.raises(ConfigError):
        ablation_configs(str(REPO / "configs/tiny-cpu-grpo.yaml"), [])


def test_ablation_summary_and_table():
    rows = [{"step": i, "reward": r, "accuracy": 0.5, "rollout_stage_entropy/a": 1.0 + i} for i, r in
            enumerate([0.1, 0.3])]
    rows[-1]["eval_f1"], rows[-1]["eval_f1/D1"] = 0.4, 0.4
    s = summarize_run(rows, ["a"], [0.0])
    assert s["reward_mean"] == pytest.approx(0.2) and s["eval_f1_last"] == 0.4
    assert s["stage_entropy_mean"] == {"a": pytest.approx(1.5)}
    c = dict(s, reward_mean=0.5, stage_betas=[-0.05])
    md = abl_md({"seed": 0, "stage_names": ["a"], "runs": {"grpo": s, "crpo": c},
                 "config_differences": {"algorithm.name": ["grpo", "crpo"]}})
    assert "| reward (mean over steps) | 0.2000 | 0.5000 | 0.3000 |" in md
    assert "+0.000 | -0.050" in md and not math.isnan(s["reward_last"])
