"""The tiny model: a random-weight Qwen3 causal LM and a byte-level BPE tokenizer
trained on the shipped posts, built offline and deterministically for a seed.

It is an ordinary Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json`` with a ChatML chat template) that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load. Tests and the default CPU run use it; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional

from crpo_ray.config import DEFAULT_STAGES

BUILTIN_PREFIX = "builtin:"
TINY_NAME = "tiny-qwen3"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Bump when the recipe changes so cached builds are not reused.
RECIPE_VERSION = 2

TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)


def _corpus(data_root: Path, max_rows_per_file: int) -> List[str]:
    """Shipped posts and instructions, plus text in the output format, in a fixed order."""
    from crpo_ray.data import load_source

    texts: List[str] = []
    for fmt, sub, split in (("mental_r1", "mental-r1", "test"), ("imhi", "imhi", "train")):
        table, _ = load_source(fmt, str(data_root / sub), split, strict=True, limit=max_rows_per_file)
        texts.extend(table.column("text").to_pylist())
        texts.extend(sorted(set(table.column("instruction").to_pylist())))
    from crpo_ray.prompts import build_system_prompt

    # Every prompt carries the system prompt: weight it so its words become single tokens.
    texts.extend([build_system_prompt(DEFAULT_STAGES)] * 32)
    stage_block = "".join(f"<{n}> The writer describes it. </{n}>\n" for n, _ in DEFAULT_STAGES)
    texts.extend([f"<think>\n{stage_block}</think>\n<answer> {a} </answer>" for a in ("Yes", "No", "Minimum")])
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_ARCH["max_position_embeddings"],
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0, data_root: Optional[Path] = None,
                     vocab_size: int = 2048, max_rows_per_file: int = 200, **arch) -> Path:
    """Build the tiny model and tokenizer into ``out_dir`` (written atomically).

    Deterministic: the same seed and shipped data give the same files, byte for byte.
    ``arch`` overrides entries of ``TINY_ARCH`` (e.g. ``hidden_size=128``).
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from crpo_ray.data import default_data_root

    out = Path(out_dir)
    tokenizer = train_tokenizer(_corpus(data_root or default_data_root(), max_rows_per_file), vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer), tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **{**TINY_ARCH, **arch},
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    # Re-draw every weight from the seeded generator so the result does not depend on init order.
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "crpo_ray_tiny.json").write_text(json.dumps({"recipe": RECIPE_VERSION, "seed": seed}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_path(path: str, cache_dir: str = ".cache/crpo-ray", seed: int = 0) -> Path:
    """A local model directory for ``model.path``; ``builtin:tiny-qwen3`` is built once and cached."""
    if not path.startswith(BUILTIN_PREFIX):
        local = Path(path).expanduser()
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model.path '{path}': not a Hugging Face model directory (no config.json)")
        return local.resolve()
    name = path[len(BUILTIN_PREFIX):]
    if name != TINY_NAME:
        raise ValueError(f"model.path '{path}': unknown builtin model (known: {BUILTIN_PREFIX}{TINY_NAME})")
    target = Path(cache_dir).expanduser().resolve() / f"{TINY_NAME}-r{RECIPE_VERSION}-s{seed}"
    if not (target / "crpo_ray_tiny.json").is_file():
        build_tiny_model(target, seed=seed)
    return target


def directory_digest(path: str | Path) -> str:
    """sha256 over every file's name and bytes in a directory (to compare builds)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()
