"""Prompt rendering with the tiny tokenizer's chat template, prefill and truncation."""

import pytest

from crpo_ray.config import DEFAULT_STAGES
from crpo_ray.prompts import TRUNCATION_MARK, build_system_prompt, render_prompt

NAMES = [n for n, _ in DEFAULT_STAGES]
INSTRUCTION = 'Determine whether the writer is stressed.\n- Respond with either "Yes" or "No".\nStatement:'


def test_system_prompt_names_every_stage_in_order():
    sp = build_system_prompt(DEFAULT_STAGES)
    positions = [sp.index(f"<{n}>") for n in NAMES]
    assert positions == sorted(positions)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in sp


def test_render_short_post(tiny_tokenizer):
    sp = build_system_prompt(DEFAULT_STAGES)
    r = render_prompt(tiny_tokenizer, INSTRUCTION, "I have three exams tomorrow.", system_prompt=sp,
                      stage_names=NAMES, max_prompt_tokens=2048)
    assert not r.truncated and r.post_tokens == r.post_tokens_kept
    assert r.text.endswith("<|im_start|>assistant\n<think>\n<stimulus>")
    assert r.text.startswith("<|im_start|>system\n" + sp)
    assert "Statement: I have three exams tomorrow.<|im_end|>" in r.text
    assert tiny_tokenizer.decode(r.token_ids) == r.text


def test_long_post_truncated_keeping_instruction_and_template(tiny_tokenizer):
    sp = build_system_prompt(DEFAULT_STAGES)
    post = " ".join(f"sentence {i} about work and sleep." for i in range(400))
    budget = 600
    r = render_prompt(tiny_tokenizer, INSTRUCTION, post, system_prompt=sp, stage_names=NAMES, max_prompt_tokens=budget)
    assert r.truncated and len(r.token_ids) <= budget
    assert r.post_tokens_kept < r.post_tokens
    assert INSTRUCTION in r.text and r.text.endswith("<|im_start|>assistant\n<think>\n<stimulus>")
    assert TRUNCATION_MARK.strip() + "<|im_end|>" in r.text
    assert "sentence 0 about work" in r.text  # the beginning of the post is kept
    # tight: one more token of budget would not have fitted more than a few more post tokens
    assert len(r.token_ids) >= budget - 8


def test_budget_too_small_is_a_clear_error(tiny_tokenizer):
    sp = build_system_prompt(DEFAULT_STAGES)
    with pytest.raises(ValueError, match="max_prompt_tokens=40 cannot hold"):
        render_prompt(tiny_tokenizer, INSTRUCTION, "post " * 100, system_prompt=sp, stage_names=NAMES,
                      max_prompt_tokens=40)


def test_no_prefill(tiny_tokenizer):
    r = render_prompt(tiny_tokenizer, INSTRUCTION, "hi", system_prompt="s", stage_names=NAMES,
                      max_prompt_tokens=512, prefill=False)
    assert r.text.endswith("<|im_start|>assistant\n")
