"""Checkpoint layout, written complete into a fresh directory before it is reported:

    model/               Hugging Face directory (config, tokenizer, model.safetensors)
    optimizer.pt         full (unsharded) optimizer state, loaded with weights_only=True
    trainer_state.json   step, policy version, data position, scheduler state
    rng.pt               torch RNG state

Ray Train (``ray.train.report(checkpoint=...)``) then persists it to ``storage_path``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


def save_hf_model(state: Dict[str, torch.Tensor], source_dir: str, out_dir: Path) -> None:
    """A loadable Hugging Face directory: the source's config and tokenizer, these weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        src = Path(source_dir) / name
        if src.is_file():
            shutil.copy2(src, out_dir / name)
    config = json.loads((Path(source_dir) / "config.json").read_text())
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if config.get("tie_word_embeddings") and "lm_head.weight" in tensors:
        tensors.pop("lm_head.weight")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def write_checkpoint(state: Dict[str, torch.Tensor], optim_state: dict, trainer_state: dict, source_dir: str) -> Path:
    """Write a complete checkpoint into a new temporary directory and return it."""
    tmp = Path(tempfile.mkdtemp(prefix="crpo-ckpt-"))
    save_hf_model(state, source_dir, tmp / "model")
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    return tmp


def read_checkpoint(directory: str) -> Tuple[Path, Optional[dict], dict]:
    """Copy a checkpoint's model to a local temporary directory; return it, the optimizer and trainer state."""
    d = Path(directory)
    state_file = d / "trainer_state.json"
    if not state_file.is_file() or not (d / "model" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d}: incomplete checkpoint (no trainer_state.json or model/model.safetensors)")
    local = Path(tempfile.mkdtemp(prefix="crpo-resume-"))
    shutil.copytree(d / "model", local / "model")
    optim = torch.load(d / "optimizer.pt", weights_only=True) if (d / "optimizer.pt").is_file() else None
    rng = d / "rng.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])
    return local / "model", optim, json.loads(state_file.read_text())
