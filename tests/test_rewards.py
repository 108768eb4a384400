"""Rewards on well-formed and malformed completions; balanced weights by hand."""

import math

import pytest

from crpo_ray.rewards import (
    accuracy_reward, balanced_weights, extract_answer, format_reward, match_label, score_completion,
    uncertainty_reward,
)

STAGES = ["stimulus", "primary_appraisal", "secondary_appraisal", "reaction", "mental_state"]

GOOD = (" Lost my job.</stimulus>\n<primary_appraisal> Big threat. </primary_appraisal>\n"
        "<secondary_appraisal> Few savings.</secondary_appraisal>\n<reaction> Panic.</reaction>\n"
        "<mental_state> Stressed.</mental_state>\n</think>\n<answer> Yes </answer>")


def test_well_formed_gets_plus_half():
    assert format_reward(GOOD, STAGES) == 0.5
    # text between blocks is allowed as long as structure and order hold
    assert format_reward(GOOD.replace("</think>\n", "</think>\nSo:\n"), STAGES) == 0.5


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace("<answer> Yes </answer>", ""),  # no answer
        lambda s: s.replace(" Yes ", "  "),  # empty answer
        lambda s: s.replace("</answer>", ""),  # unclosed answer (truncated)
        lambda s: s.replace(" Big threat. ", "  "),  # empty stage
        lambda s: s.replace("<reaction> Panic.</reaction>\n", ""),  # missing stage
        lambda s: s + "<reaction>again</reaction>",  # repeated stage
        lambda s: s.replace("</think>", "") ,  # think not closed
        lambda s: s + "\n<answer>No</answer>",  # two answers
        lambda s: s.replace("<primary_appraisal> Big threat. </primary_appraisal>\n", "").replace(
            "<mental_state>", "<primary_appraisal> Big threat. </primary_appraisal>\n<mental_state>"),  # order
        lambda s: s.replace("</mental_state>\n</think>\n<answer> Yes </answer>",
                            "</mental_state>\n<answer> Yes </answer></think>"),  # answer inside think
        lambda s: s.replace("<mental_state> Stressed.</mental_state>\n</think>",
                            "</think><mental_state> Stressed.</mental_state>"),  # stage outside think
        lambda s: s.replace(" Panic.</reaction>", " Panic.<mental_state></reaction>"),  # nested tag
        lambda s: "<think>\n<stimulus>" + s,  # prefill written again
        lambda s: s[: len(s) // 2],  # truncated
        lambda s: "",
    ],
)
def test_malformed_gets_minus_half(mutate):
    assert format_reward(mutate(GOOD), STAGES) == -0.5


def test_format_value_and_no_prefill():
    assert format_reward(GOOD, STAGES, value=1.0) == 1.0
    assert format_reward(GOOD, STAGES, prefilled=False) == -0.5
    assert format_reward("<think>\n<stimulus>" + GOOD, STAGES, prefilled=False) == 0.5


@pytest.mark.parametrize(
    "answer, gold, ok",
    [
        ("Yes", "Yes", True), ("yes", "Yes", True), ("YES, clearly", "Yes", True), ('"Yes"', "Yes", True),
        ("**No**", "No", True), ("Yesterday", "Yes", False), ("No", "Yes", False),
        ("[1-2]", "[1-2]", True), ("[1-2]", "[2-3]", False), ("Moderately depressed", "Moderately depressed", True),
        ("Mild", "Minimum", False), ("The answer is Yes", "Yes", False),
    ],
)
def test_accuracy_reward(answer, gold, ok):
    completion = f"...</think><answer> {answer} </answer>"
    assert accuracy_reward(completion, gold, weight=1.7) == (1.7 if ok else -1.7)


def test_accuracy_without_answer_is_wrong():
    assert accuracy_reward("no answer block", "Yes") == -1.0
    assert extract_answer("<answer>  a  </answer><answer>b</answer>") == "a"
    assert extract_answer("<answer> unclosed") is None


def test_match_label_prefers_longest():
    labels = ["no", "no mental disorders", "depression"]
    assert match_label("No mental disorders.", labels) == "no mental disorders"
    assert match_label("no.", labels) == "no"
    assert match_label("anxiety", labels) is None and match_label("", labels) is None


def test_balanced_weights_by_hand():
    # sizes A=40, B=20: inverse 1/40, 1/20, mean 0.0375 -> w_d(A)=2/3, w_d(B)=4/3
    # A's classes 30/10: inverse 1/30, 1/10, mean 1/15 -> w_c(yes)=0.5, w_c(no)=1.5; B's one class: 1
    w = balanced_weights({"A": {"yes": 30, "no": 10}, "B": {"x": 20}})
    assert w["A"]["yes"] == pytest.approx(math.sqrt(0.5 * 2 / 3))
    assert w["A"]["no"] == pytest.approx(math.sqrt(1.5 * 2 / 3))
    assert w["B"]["x"] == pytest.approx(math.sqrt(4 / 3))
    # a balanced mix gives weight 1 everywhere
    flat = balanced_weights({"A": {"y": 5, "n": 5}, "B": {"y": 5, "n": 5}})
    assert all(v == pytest.approx(1.0) for d in flat.values() for v in d.values())


def test_uncertainty_term_and_breakdown():
    assert uncertainty_reward([2.0, None, 1.5, 0.5], weight=0.1) == pytest.approx(0.15)
    assert uncertainty_reward([2.0, 0.5], weight=0.0) == 0.0
    assert uncertainty_reward([None, 1.0], weight=1.0) == 0.0
    b = score_completion(GOOD, "Yes", STAGES, accuracy_weight=0.8, stage_entropies=[3.0, 1.0], uncertainty_weight=0.5)
    assert (b.format, b.accuracy, b.uncertainty) == (0.5, 0.8, pytest.approx(1.0))
    assert b.total == pytest.approx(2.3)
