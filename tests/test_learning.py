"""CRPO learns through the whole distributed pipeline (embedded Ray, 2 FSDP2 ranks, CPU).

The task, chosen so the tiny model can learn it in a few steps: a toy dataset whose
gold answer is always "Yes". A short supervised warm start teaches the output format
with answers drawn 30/70 from Yes/No, so the starting policy earns format +0.5 and a
negative accuracy reward on average (+1 or -1 per sample). Only reinforcement can move
the answer toward "Yes".

Margin: each step scores 32 samples (8 prompts x G=4), so a 5-step window averages 160
rewards whose variance is about 1 (the +-1 accuracy term; the format term barely
varies); under a policy that does not change, the difference of two windows has a
standard deviation of about sqrt(2/160) = 0.11. We require the last 5 steps to beat
the first 5 by 0.3 (2.7 standard deviations; about 1 in 300 by chance) and every
batch to come from the weights the learner published just before it. If new weights never reached the rollout workers,
the sampling policy would stay the warm-start one, the windows would not differ beyond
chance, and the rollout log-probs would drift away from the learner's (checked below).
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crpo_ray.config import DEFAULT_STAGES
from crpo_ray.prompts import build_system_prompt, render_prompt
from crpo_ray.tiny import build_tiny_model
from conftest import REPO

pytestmark = pytest.mark.slow
NAMES = [n for n, _ in DEFAULT_STAGES]
# The default tiny model (64 wide, 2 layers) cannot keep "answer Yes" apart from the rest
# of its output: boosting " Yes" at the answer leaks into every position and breaks the
# format. Twice as wide and deep, it learns the task and keeps the format.
ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, head_dim=32)
INSTRUCTION = 'Is the writer stressed?\n- Answer with either "Yes" or "No".\nStatement:'
POSTS = ["I have exams.", "Work is hard.", "My cat is ill.", "Rent is due.", "I slept badly.", "My boss yelled.",
         "Deadline tonight.", "Exams again.", "No money left.", "Too many chores.", "Bad week.", "Lost my keys."]


def _toy_dataset(root: Path) -> None:
    (root / "Toy").mkdir(parents=True)
    lines = ["text,label,mental_prompt"] + [f'"{p}",Yes,"{INSTRUCTION.replace(chr(34), chr(34) * 2)}"' for p in POSTS]
    (root / "Toy" / "train_clean.csv").write_text("\n".join(lines) + "\n")
    (root / "Toy" / "test_clean.csv").write_text("\n".join(lines[:5]) + "\n")


def _completion(answer: str) -> str:
    body = "".join(f"<{n}> ok</{n}>\n" for n in NAMES[1:])
    return f" ok</{NAMES[0]}>\n{body}</think>\n<answer> {answer} </answer>"


def _warm_start(src: Path, out: Path, steps: int = 300) -> None:
    """Supervised steps on well-formed completions answering Yes 30% and No 70% of the time."""
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    sp = build_system_prompt(DEFAULT_STAGES)
    prompts = [render_prompt(tok, INSTRUCTION, p, system_prompt=sp, stage_names=NAMES, max_prompt_tokens=512).token_ids
               for p in POSTS]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        seqs, labels = [], []
        for _ in range(8):
            p = rng.choice(prompts)
            answer = "Yes" if rng.random() < 0.3 else "No"  # a prior against the right answer
            c = tok(_completion(answer), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seqs.append(p + c)
            labels.append([-100] * len(p) + c)
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        loss = model(input_ids=ids, attention_mask=(lab != -100) | (ids != tok.pad_token_id), labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The toy data and the warm-started model, shared by the sync and the async run."""
    root = tmp_path_factory.mktemp("learn")
    data = root / "data"
    _toy_dataset(data)
    model_dir = root / "warm"
    _warm_start(build_tiny_model(root / "tiny", seed=0, **ARCH), model_dir)
    return data, model_dir


# Stage-entropy strength: every stage of this toy completion is the one token " ok", so a
# stage's mean entropy is one token's and the paper's m = 0.06 (set for stages of tens of
# tokens) weighs each token here tens of times more than in the paper; the test uses
# m = 0.01. Measured on this task (seeded, so reruns repeat): sync learns with m = 0.02
# (reward 0.12 -> 1.11 over the windows); async with m = 0.02 learned for 5 steps, then
# its stage entropies ran away (0.003 -> 0.6 by step 8) and the format broke for good
# (format_ok 0.28 at step 19); async with m = 0.01 had the same excursion at steps 5-8
# and recovered (0.11 -> 0.65); async GRPO (m = 0) had a smaller one and recovered
# (0.08 -> 0.89). One-step-stale samples delay the pg term's correction of an entropy rise
# by a step; the entropy bonus pushes through that delay. With algorithm.entropy_ceiling=0.1
# (the bonus off for a sample's stage above 0.1) async learned with m = 0.02 (0.11 -> 0.64)
# and with m = 0.06 (0.11 -> 0.70). Both modes run the same config, without the ceiling.
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_crpo_raises_reward_through_the_pipeline(mode, warm, tmp_path):
    data, model_dir = warm
    cfg = tmp_path / "learn.yaml"
    cfg.write_text(
        "run: {name: learn, total_steps: 20, eval_max_examples: 4}\n"
        f"model: {{path: {model_dir}}}\n"
        f"data:\n  train:\n    - {{format: mental_r1, root: {data}, split: train}}\n"
        f"  eval:\n    - {{format: mental_r1, root: {data}, split: test}}\n"
        "rollout: {group_size: 4, prompts_per_step: 8, max_new_tokens: 96, temperature: 0.85, top_p: 1.0}\n"
        "algorithm: {kl_beta: 0.05, tanh_m: 0.01}\n"
        "learner: {num_workers: 2, lr: 1.0e-4, micro_batch_size: 8}\n"
        f"cluster: {{mode: {mode}, max_staleness: 1}}\n"
        "logging: {tensorboard: false}\n")
    r = subprocess.run([str(Path(sys.executable).parent / "crpo-ray"), "train", "--config", str(cfg),
                        f"run.output_dir={tmp_path / 'runs'}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "learn" / "metrics.jsonl").read_text().splitlines()]
    if mode == "sync":
        assert [row["policy_versions"] for row in rows] == [[s] for s in range(20)]
        # The rollout workers sample with the learner's weights: their log-probs of the sampled
        # tokens equal the learner's up to float noise (about 1e-8 here). Had the weights not
        # reached them, this gap grows to 1e-3..1e-2 from the second step on (checked by
        # turning weight loading into a no-op).
        assert max(row["logprob_abs_diff"] for row in rows) < 1e-4
    else:
        # Async: step s trains on samples of version s - 1 (generated while step s - 1 trained),
        # never older than max_staleness = 1, none dropped.
        assert [row["policy_versions"] for row in rows] == [[max(0, s - 1)] for s in range(20)]
        assert max(row["staleness_max"] for row in rows) <= 1
        assert sum(row["dropped_stale_samples"] for row in rows) == 0
    rewards = [row["reward"] for row in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print("rewards", [round(x, 3) for x in rewards], "accuracy", [row["accuracy"] for row in rows])
    assert rows[0]["format_ok"] > 0.5  # the warm start taught the format
    assert last - first > 0.3, (first, last, rewards)
    acc = [row["accuracy"] for row in rows]
    assert sum(acc[-5:]) > sum(acc[:5])
