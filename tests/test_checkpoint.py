"""Checkpoint safety: manifest, verification, atomic writes (no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crpo_ray.actors.checkpoint import (CheckpointError, latest_valid_checkpoint, read_checkpoint,
                                        verify_checkpoint, write_checkpoint)
from crpo_ray.fsutil import atomic_dir


@pytest.fixture(scope="module")
def weights(tiny_model_dir):
    return load_file(str(Path(tiny_model_dir) / "model.safetensors"))


def _optim(weights):
    names = sorted(weights)[:3]
    return {"state": {n: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4), "exp_avg_sq": torch.rand(4)}
                      for n in names},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0, "params": names}]}


def _write(weights, src, out, step=1):
    return write_checkpoint(weights, _optim(weights), {"step": step, "policy_version": step}, str(src), out)


def test_round_trip(weights, tiny_model_dir, tmp_path):
    optim = _optim(weights)
    torch.manual_seed(123)
    d = write_checkpoint(weights, optim, {"step": 7, "scheduler": {"last_epoch": 7}}, str(tiny_model_dir),
                         tmp_path / "ckpt")
    expected_next = torch.rand(3)  # the RNG state saved is the one just before this draw
    manifest = verify_checkpoint(d)
    assert manifest["version"] == 1 and {"model/model.safetensors", "optimizer.pt", "trainer_state.json",
                                         "rng.pt", "model/tokenizer.json"} <= set(manifest["files"])
    assert "manifest.json" not in manifest["files"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary sibling was renamed
    torch.manual_seed(999)
    model_dir, optim2, state = read_checkpoint(str(d))
    assert torch.equal(torch.rand(3), expected_next)
    assert state == {"step": 7, "scheduler": {"last_epoch": 7}}
    loaded = load_file(str(model_dir / "model.safetensors"))
    assert loaded.keys() <= weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in loaded)
    assert optim2["param_groups"][0]["betas"] == (0.9, 0.999)
    for name, s in optim["state"].items():
        assert torch.equal(optim2["state"][name]["exp_avg"], s["exp_avg"])
    assert not list(d.rglob("*.bin")) and (model_dir / "config.json").is_file()


def _truncate(d):
    p = d / "model" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-10])


def _flip(d):
    p = d / "optimizer.pt"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _pickled_weights(d):
    torch.save({"w": torch.zeros(2)}, d / "model" / "pytorch_model.bin")
    _edit_manifest(d, lambda m: m["files"].__setitem__("model/pytorch_model.bin", {"size": 1, "sha256": "x"}))


CORRUPTIONS = {
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    "manifest not json": (lambda d: (d / "manifest.json").write_text("{oops"), "not valid JSON"),
    "foreign manifest": (lambda d: _edit_manifest(d, lambda m: m.pop("format")), "not a crpo-ray checkpoint"),
    "future version": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("version", 99)), "version 99"),
    "missing file": (lambda d: (d / "trainer_state.json").unlink(), "missing file trainer_state.json"),
    "missing weights": (lambda d: (d / "model" / "model.safetensors").unlink(),
                        "missing file model/model.safetensors"),
    "truncated": (_truncate, "model/model.safetensors has"),
    "bit flip": (_flip, "optimizer.pt fails its sha256 check"),
    "unlisted required": (lambda d: _edit_manifest(d, lambda m: m["files"].pop("model/config.json")),
                          "does not list model/config.json"),
    "pickled weights": (_pickled_weights, "model/pytorch_model.bin: weights must be stored as safetensors"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_one_clear_error(case, weights, tiny_model_dir, tmp_path):
    d = _write(weights, tiny_model_dir, tmp_path / "ckpt")
    damage, message = CORRUPTIONS[case]
    damage(d)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(d))  # verifies before loading anything
    text = str(err.value)
    assert message in text and "\n" not in text and str(d) in text
    assert isinstance(err.value, ValueError)  # the CLI turns it into `crpo-ray: error: ...`, exit 2


def test_failed_write_leaves_nothing(weights, tiny_model_dir, tmp_path):
    with pytest.raises(Exception):
        write_checkpoint(weights, {"bad": lambda: None}, {"step": 1}, str(tiny_model_dir), tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []
    _write(weights, tiny_model_dir, tmp_path / "ckpt")
    with pytest.raises(FileExistsError):  # never written over
        _write(weights, tiny_model_dir, tmp_path / "ckpt")


KILLED_WRITER = """
import os, sys
from safetensors.torch import load_file
from crpo_ray.actors.checkpoint import write_checkpoint

class Kill:  # the process dies while the optimizer state is being written
    def __reduce__(self):
        os._exit(9)

src, out = sys.argv[1], sys.argv[2]
write_checkpoint(load_file(src + "/model.safetensors"), {"x": Kill()}, {"step": 2}, src, out)
"""


def test_killed_write_leaves_no_valid_looking_checkpoint(weights, tiny_model_dir, tmp_path):
    good = _write(weights, tiny_model_dir, tmp_path / "checkpoint_000000", step=1)
    target = tmp_path / "checkpoint_000001"
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tiny_model_dir), str(target)], timeout=120)
    assert r.returncode == 9
    assert not target.exists()
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint_000001.tmp-")]
    assert (partial / "model" / "model.safetensors").is_file()  # it got that far, then died
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(partial)
    assert latest_valid_checkpoint(tmp_path) == (good, [])


def test_latest_valid_checkpoint_skips_a_damaged_newer_one(weights, tiny_model_dir, tmp_path):
    old = _write(weights, tiny_model_dir, tmp_path / "checkpoint_000000", step=1)
    new = _write(weights, tiny_model_dir, tmp_path / "checkpoint_000001", step=2)
    assert latest_valid_checkpoint(tmp_path) == (new, [])
    _truncate(new)
    found, skipped = latest_valid_checkpoint(tmp_path)
    assert found == old and len(skipped) == 1 and "checkpoint_000001" in skipped[0]
    assert latest_valid_checkpoint(tmp_path / "nothing-here") == (None, [])


def test_atomic_dir(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith("export.tmp-") and not target.exists()
        (tmp / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["export"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("b")
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (target / "a.txt").is_file()
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
