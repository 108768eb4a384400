"""Checkpoint layout, written into a temporary sibling and renamed into place when complete:

    model/               Hugging Face directory (config, tokenizer, model.safetensors)
    optimizer.pt         full (unsharded) optimizer state, loaded with weights_only=True
    trainer_state.json   step, policy version, data position, scheduler state
    rng.pt               torch RNG state, loaded with weights_only=True
    manifest.json        format version and every other file's size and sha256, written last

Weights are only ever stored as safetensors. ``read_checkpoint`` verifies the manifest before
it loads anything, so a partial copy or a corrupted file is one clear error naming the file.
Ray Train (``ray.train.report(checkpoint=...)``) then persists the directory to ``storage_path``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from safetensors.torch import save_file

from crpo_ray.fsutil import TMP_MARK, atomic_dir, file_digests, sha256_file

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")
MANIFEST = "manifest.json"
FORMAT = "crpo-ray-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("trainer_state.json", "model/config.json", "model/model.safetensors")
PICKLED = ("optimizer.pt", "rng.pt")  # plain tensors and containers only: read with weights_only=True
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint directory that is incomplete, corrupted or not a crpo-ray checkpoint."""


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


def write_manifest(directory: Path) -> dict:
    """Record every file under ``directory`` (size, sha256) in ``manifest.json``; returns it."""
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "files": file_digests(directory, skip=(MANIFEST,))}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_checkpoint(state: Dict[str, torch.Tensor], optim_state: dict, trainer_state: dict, source_dir: str,
                     out_dir: Optional[Union[str, Path]] = None) -> Path:
    """Write a complete checkpoint and return its directory: ``out_dir`` (which must not exist),
    or a new one under the system temporary directory. Built in ``<dir>.tmp-XXXX`` and renamed
    only once everything, the manifest last, is written and fsynced."""
    target = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="crpo-ckpt-")) / "checkpoint"
    with atomic_dir(target) as tmp:
        save_hf_model(state, source_dir, tmp / "model")
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        write_manifest(tmp)
    return target


def _load_manifest(d: Path) -> dict:
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d}: not a directory")
    path = d / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {d}: no {MANIFEST} (an interrupted write, a partial copy, "
                              "or not a crpo-ray checkpoint)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {d}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {d}: {MANIFEST} is not a crpo-ray checkpoint manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {d}: format version {manifest.get('version')!r} is not supported "
                              f"(this crpo-ray reads version {FORMAT_VERSION})")
    return manifest


def verify_checkpoint(directory: Union[str, Path], checksums: bool = True) -> dict:
    """Check a checkpoint directory against its manifest; return the manifest.

    Raises CheckpointError (one line, naming the file) for: no manifest, an unreadable or
    foreign manifest, a required file not listed, a pickle file other than the optimizer and
    RNG state, a missing file, a size mismatch, a sha256 mismatch (skipped if not ``checksums``).
    """
    d = Path(directory)
    manifest = _load_manifest(d)
    files = manifest["files"]
    for rel in REQUIRED:
        if rel not in files:
            raise CheckpointError(f"checkpoint {d}: {MANIFEST} does not list {rel}")
    for rel, meta in files.items():
        if rel.endswith(UNSAFE_SUFFIXES) and rel not in PICKLED:
            raise CheckpointError(f"checkpoint {d}: {rel}: weights must be stored as safetensors")
        path = d / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {d}: missing file {rel}")
        size = path.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(f"checkpoint {d}: {rel} has {size} bytes, the manifest says {meta.get('size')} "
                                  "(truncated or partially copied)")
        if checksums and sha256_file(path) != meta.get("sha256"):
            raise CheckpointError(f"checkpoint {d}: {rel} fails its sha256 check (corrupted)")
    return manifest


def read_checkpoint(directory: str) -> Tuple[Path, Optional[dict], dict]:
    """Verify a checkpoint, copy its model to a local temporary directory; return it, the
    optimizer state (None if not saved) and the trainer state. Restores the torch RNG state."""
    d = Path(directory)
    files = verify_checkpoint(d)["files"]
    local = Path(tempfile.mkdtemp(prefix="crpo-resume-"))
    shutil.copytree(d / "model", local / "model")
    optim = torch.load(d / "optimizer.pt", weights_only=True) if "optimizer.pt" in files else None
    if "rng.pt" in files:
        torch.set_rng_state(torch.load(d / "rng.pt", weights_only=True)["torch"])
    return local / "model", optim, json.loads((d / "trainer_state.json").read_text())


def latest_valid_checkpoint(run_dir: Union[str, Path], checksums: bool = False) -> Tuple[Optional[Path], List[str]]:
    """The newest ``checkpoint_*`` under ``run_dir`` (by trainer step) that verifies, and one line
    for each newer one skipped as invalid. Temporary ``*.tmp-*`` directories are never candidates."""
    candidates = []
    for d in Path(run_dir).glob("checkpoint_*"):
        if not d.is_dir() or TMP_MARK in d.name:
            continue
        try:
            step = json.loads((d / "trainer_state.json").read_text()).get("step", -1)
        except (OSError, ValueError):
            step = -1
        candidates.append((step, d.stat().st_mtime, d))
    skipped = []
    for _, _, d in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        try:
            verify_checkpoint(d, checksums=checksums)
            return d, skipped
        except CheckpointError as exc:
            skipped.append(str(exc))
    return None, skipped
