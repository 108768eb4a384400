"""Weighted F1 per dataset against scikit-learn on fixed predictions; unparseable answers."""

import pytest
from sklearn.metrics import f1_score

from crpo_ray.metrics import evaluate_predictions, predict_label, weighted_f1


def ans(x):
    return f"<think>...</think><answer>{x}</answer>"


def test_weighted_f1_matches_sklearn_by_hand():
    golds = ["yes", "yes", "no", "no", "no"]
    preds = ["yes", "no", "no", "no", "yes"]
    # yes: P=1/2 R=1/2 F=0.5 (support 2); no: P=2/3 R=2/3 F=2/3 (support 3) -> (2*0.5 + 3*2/3)/5 = 0.6
    assert weighted_f1(golds, preds, ["yes", "no"]) == pytest.approx(0.6)


def test_unparseable_counts_as_wrong():
    golds = ["yes", "no", "no"]
    res = evaluate_predictions(["D"] * 3, golds, [ans("Yes"), "garbage", ans("maybe")], [["yes", "no"]] * 3)
    s = res.per_dataset["D"]
    assert s.unparseable == 2 and s.n == 3 and s.accuracy == pytest.approx(1 / 3)
    expected = f1_score(golds, ["yes", "<x>", "<y>"], labels=["yes", "no"], average="weighted", zero_division=0)
    assert s.weighted_f1 == pytest.approx(expected)


def test_per_dataset_and_mean():
    datasets = ["A", "A", "B", "B"]
    golds = ["Yes", "No", "[1-2]", "[3-4]"]
    comps = [ans("Yes"), ans("No"), ans("[1-2]"), ans("[1-2]")]
    sets = [["Yes", "No"]] * 2 + [["[1-2]", "[2-3]", "[3-4]", "[4-5]"]] * 2
    res = evaluate_predictions(datasets, golds, comps, sets)
    fb = f1_score(["[1-2]", "[3-4]"], ["[1-2]", "[1-2]"], labels=sets[2], average="weighted", zero_division=0)
    assert res.per_dataset["A"].weighted_f1 == 1.0
    assert res.per_dataset["B"].weighted_f1 == pytest.approx(fb)
    assert res.mean_weighted_f1 == pytest.approx((1.0 + fb) / 2)
    assert res.as_dict()["datasets"]["B"]["n"] == 2


def test_predict_label():
    assert predict_label(ans(" Moderate "), ["Minimum", "Mild", "Moderate", "Severe"]) == "Moderate"
    assert predict_label("<answer>Yes", ["Yes", "No"]) is None
    with pytest.raises(ValueError):
        evaluate_predictions(["A"], ["x"], [], [["x"]])
