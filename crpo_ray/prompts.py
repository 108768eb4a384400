"""Prompts: the system prompt, the user turn, the chat template and the prefill.

The system prompt explains the appraisal stages and the output format; the user
turn is the dataset's instruction followed by the post; the assistant turn is
prefilled with ``<think>\\n<first_stage>``. Posts that do not fit the prompt budget
are cut (from the end) so that the instruction, template and prefill stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from crpo_ray.stages import prefill_text

TRUNCATION_MARK = " [...]"


def build_system_prompt(stages: Sequence[Tuple[str, str]]) -> str:
    """A system prompt naming each ``(name, description)`` stage and the output format."""
    lines = [
        "You assess mental health from social-media posts. Reason step by step, following "
        "cognitive appraisal theory, then give a single answer.",
        "Write your reasoning inside <think> and </think>, as these stages in this order, "
        "each inside its own tags:",
    ]
    for i, (name, description) in enumerate(stages, start=1):
        lines.append(f"{i}. <{name}>: {description}.")
    layout = "".join(f"<{n}> ... </{n}>\n" for n, _ in stages)
    lines.append(
        "Then write only the label you choose, exactly as the task spells it, inside <answer> and </answer>. "
        "The layout is:\n<think>\n" + layout + "</think>\n<answer> label </answer>"
    )
    return "\n".join(lines)


def resolve_system_prompt(override: str, stages: Sequence[Tuple[str, str]]) -> str:
    """The configured system prompt, or the one built from the stages when it is empty."""
    return override or build_system_prompt(stages)


def user_message(instruction: str, text: str) -> str:
    """The user turn: the task instruction, then the post."""
    return f"{instruction.rstrip()} {text.strip()}"


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # the full prompt string, prefill included
    token_ids: List[int]
    truncated: bool  # the post was cut to fit the budget
    post_tokens: int  # tokens of the post before any cut
    post_tokens_kept: int


#: Prompt format for a tokenizer without a chat template (e.g. a base model never tuned for chat).
PLAIN_FORMAT = "{system}\n\n### Post\n{user}\n\n### Response\n"


def _render(tokenizer, system_prompt: str, user: str, prefill: str) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        return PLAIN_FORMAT.format(system=system_prompt, user=user) + prefill
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + prefill


def _encode(tokenizer, text: str) -> List[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_prompt(
    tokenizer,
    instruction: str,
    text: str,
    *,
    system_prompt: str,
    stage_names: Sequence[str],
    max_prompt_tokens: int,
    prefill: bool = True,
) -> RenderedPrompt:
    """Render one prompt with the tokenizer's chat template, cutting the post to fit.

    Raises ValueError when even an empty post does not fit ``max_prompt_tokens``
    (the budget is too small for the instruction and template).
    """
    prefix = prefill_text(stage_names) if prefill else ""
    full = _render(tokenizer, system_prompt, user_message(instruction, text), prefix)
    ids = _encode(tokenizer, full)
    post_ids = _encode(tokenizer, text.strip())
    if len(ids) <= max_prompt_tokens:
        return RenderedPrompt(full, ids, False, len(post_ids), len(post_ids))
    fixed = len(_encode(tokenizer, _render(tokenizer, system_prompt, user_message(instruction, TRUNCATION_MARK), prefix)))
    if fixed > max_prompt_tokens:
        raise ValueError(
            f"prompt.max_prompt_tokens={max_prompt_tokens} cannot hold the system prompt, instruction and "
            f"template ({fixed} tokens without the post)"
        )
    keep = max(0, max_prompt_tokens - fixed)
    while True:
        cut = tokenizer.decode(post_ids[:keep], skip_special_tokens=True).rstrip() + TRUNCATION_MARK
        full = _render(tokenizer, system_prompt, user_message(instruction, cut), prefix)
        ids = _encode(tokenizer, full)
        if len(ids) <= max_prompt_tokens or keep == 0:
            return RenderedPrompt(full, ids, True, len(post_ids), keep)
        keep = max(0, keep - max(1, len(ids) - max_prompt_tokens))
