"""State dicts as numpy buffers (shared per tensor, or packed per dtype) and back, bit for bit."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from crpo_ray.weights import load_into, pack_state_dict, share_state_dict, unpack_views


def test_pack_roundtrip_mixed_dtypes():
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(3, 4, generator=g), "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
             "c.weight": torch.randn(2, 2, generator=g), "scalar": torch.tensor(3.0)}
    packed = pack_state_dict(state, version=7)
    assert packed.version == 7 and set(packed.buffers) == {"float32", "bfloat16"}
    assert packed.nbytes == sum(t.numel() * t.element_size() for t in state.values())
    views = unpack_views(packed)
    for k, t in state.items():
        assert views[k].dtype == t.dtype and torch.equal(views[k], t)


def test_views_share_the_buffer():
    packed = pack_state_dict({"w": torch.ones(4)}, 0)
    views = unpack_views(packed)
    packed.buffers["float32"][:4] = np.frombuffer(np.float32(2.0).tobytes(), dtype=np.uint8)
    assert views["w"][0].item() == 2.0  # a view, not a copy


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_load_into_model_bit_for_bit(layout, tiny_model_dir):
    src = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dst = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    state = {k: v.clone() for k, v in src.state_dict().items()}
    copied = load_into(dst, (pack_state_dict if layout == "packed" else share_state_dict)(state, 1))
    assert copied > 0
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_into_rejects_mismatch(tiny_model_dir):
    dst = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = dict(dst.state_dict())
    name = "model.norm.weight"
    with pytest.raises(ValueError, match="shape"):
        load_into(dst, pack_state_dict({**state, name: torch.ones(3)}, 1))
    state.pop(name)
    with pytest.raises(KeyError, match=name):
        load_into(dst, pack_state_dict(state, 1))


def test_pack_reuse_overwrites_buffers_in_place():
    a = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    first = pack_state_dict(a, 1)
    b = {"w": -torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    second = pack_state_dict(b, 2, reuse=first)
    assert second.version == 2
    assert second.buffers["float32"] is not None
    assert second.buffers["float32"].ctypes.data == first.buffers["float32"].ctypes.data  # no new allocation
    views = unpack_views(second)
    assert torch.equal(views["w"], b["w"]) and torch.equal(views["b"], b["b"])
    other = pack_state_dict({"w": torch.ones(3, 2)}, 3, reuse=second)  # another layout: fresh buffers
    assert other.buffers["float32"].ctypes.data != second.buffers["float32"].ctypes.data
    assert torch.equal(unpack_views(second)["w"], b["w"])


def test_share_roundtrip_without_copy():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    state = {"a.weight": base, "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
             "t.weight": base.t(), "scalar": torch.tensor(3.0), "empty": torch.zeros(0)}
    shared = share_state_dict(state, version=4)
    assert shared.version == 4 and set(shared.buffers) == set(state)
    assert shared.nbytes == sum(t.numel() * t.element_size() for t in state.values())
    views = unpack_views(shared)
    for k, t in state.items():
        assert views[k].dtype == t.dtype and views[k].shape == t.shape and torch.equal(views[k], t), k
    # contiguous tensors are wrapped, not copied; the transposed one had to be made contiguous
    assert shared.buffers["a.weight"].ctypes.data == base.data_ptr()
    base[0, 0] = 42.0
    assert views["a.weight"][0, 0].item() == 42.0 and views["t.weight"][0, 0].item() != 42.0
