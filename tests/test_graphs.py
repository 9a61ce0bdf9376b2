"""The CUDA-graph iteration's bookkeeping on the CPU: the structure walk and its signature (the graph itself
runs in tests/test_cuda.py)."""

import dataclasses

import pytest
import torch

import lipzoo
from lipzoo.bounds.graphs import rebind, structure_tensors
from lipzoo.bounds.structure import build_structure
from lipzoo.bounds.sweep import power_iteration


def _start(structure, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [(t, j) for t in range(structure.depth) for j in range(-1, t)]
    return {k: torch.randn(1, *structure.space_shape(*k)[0], generator=g) for k in keys}


@pytest.mark.parametrize("name,shape", [("4c3f", (1, 28, 28)), ("lt-res-s", (3, 32, 32))])
def test_rebind_copies_every_tensor_and_iterates_the_same(name, shape):
    torch.manual_seed(0)
    s = build_structure(lipzoo.create_model(name), shape)
    sig, tensors = structure_tensors(s)
    copy, new = rebind(s, lambda t: t.detach().clone())
    assert len(new) == len(tensors) and all(a is not b and torch.equal(a, b) for a, b in zip(new, tensors))
    sig2, walked = structure_tensors(copy)
    assert sig2 == sig and all(a is b for a, b in zip(walked, new))  # the copy's tensors, in the same order
    v = _start(s)
    with torch.no_grad():
        ref, got = power_iteration(s, v, 2), power_iteration(copy, v, 2)
    for k in ref:
        assert torch.equal(ref[k], got[k])
    # writing into the copy's tensors changes its iteration: nothing is shared with the original
    originals = [t.clone() for t in tensors]
    with torch.no_grad():
        for t in new:
            t.add_(torch.randn_like(t))
        moved = power_iteration(copy, v, 2)
    assert any(not torch.allclose(moved[k], ref[k]) for k in ref)
    assert all(torch.equal(a, b) for a, b in zip(structure_tensors(s)[1], originals))


def test_signature_follows_layout_not_values():
    torch.manual_seed(0)
    model = lipzoo.create_model("4c3f")
    s1 = build_structure(model, (1, 28, 28))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # an optimizer step: same layout
    s2 = build_structure(model, (1, 28, 28))
    assert structure_tensors(s1)[0] == structure_tensors(s2)[0]
    # a slope, a dtype, a shape: a new layout
    b = s2.blocks[0]
    s3 = dataclasses.replace(s2, blocks=[dataclasses.replace(b, alpha=b.alpha + 0.5)] + s2.blocks[1:])
    assert structure_tensors(s3)[0] != structure_tensors(s2)[0]
    assert structure_tensors(s2.to(torch.float64))[0] != structure_tensors(s2)[0]
    other = build_structure(lipzoo.create_model("4c3f", num_classes=5), (1, 28, 28))
    assert structure_tensors(other)[0] != structure_tensors(s2)[0]


def test_estimator_cuda_graph_option():
    model = lipzoo.create_model("4c3f")
    with pytest.raises(ValueError, match="cuda_graph"):
        lipzoo.LipLTEstimator(model, (1, 28, 28), cuda_graph="yes")
    est = lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=2, cuda_graph=True)
    assert "cuda_graph=True" in repr(est)
    # on the CPU there is no graph: the eager iteration runs, and the value matches the default's
    torch.testing.assert_close(est(), lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=2)())
    assert est._graph is None
