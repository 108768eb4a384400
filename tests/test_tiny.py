"""The offline tiny model: a Hugging Face directory, deterministic for a seed."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crpo_ray.tiny import build_tiny_model, directory_digest, resolve_model_path


def test_loads_with_auto_classes(tiny_model_dir):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen3"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    ids = tok("<think>\n<stimulus> hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_deterministic_for_seed(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert directory_digest(again) == directory_digest(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", seed=1)
    a = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    # the tokenizer comes from the shipped data only, so it is the same for every seed
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_resolve_builtin_caches(tmp_path):
    first = resolve_model_path("builtin:tiny-qwen3", str(tmp_path), seed=3)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = resolve_model_path("builtin:tiny-qwen3", str(tmp_path), seed=3)
    assert first == second and (second / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary directory left behind


def test_resolve_errors(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ValueError, match="unknown builtin model"):
        resolve_model_path("builtin:gpt-17")
