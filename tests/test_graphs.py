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
    assert "cuda_graph=True" in repr(est) and "cuda_graph" not in repr(lipzoo.LipLTEstimator(model, (1, 28, 28)))
    # on the CPU there is no graph: the eager iteration runs, and the value matches the default's
    torch.testing.assert_close(est(), lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=2)())
    assert est._graph is None and not est._graph_failed


@pytest.fixture
def fake_capture(monkeypatch):
    """The CUDA graph simulated on the CPU: capturing runs the iteration once, a replay runs it again on
    the graph's own (static) tensors and writes into the outputs of the capture, as a CUDA graph does.
    Everything but the CUDA calls themselves runs: the structure walk, the copies in, the outputs,
    when to capture again."""
    from lipzoo.bounds import estimator, graphs

    captures = []

    def capture(self):
        captures.append(self)
        return self.run()

    def replay(self):
        for k, x in self.run().items():
            self.outputs[k].copy_(x)

    monkeypatch.setattr(graphs.IterationGraph, "_capture", capture)
    monkeypatch.setattr(graphs.IterationGraph, "_replay", replay)
    monkeypatch.setattr(estimator, "_graphable", lambda x: True)
    return captures


@pytest.mark.parametrize("name,dtype", [("4c3f", None), ("lt-res-s", None), ("4c3f", torch.bfloat16)])
def test_graphed_estimator_follows_the_weights_through_training(fake_capture, name, dtype):
    torch.manual_seed(0)
    model = lipzoo.create_model(name)
    shape = tuple(model.input_shape)
    graphed = lipzoo.LipLTEstimator(model, shape, n_iter=2, iteration_dtype=dtype, cuda_graph=True)
    eager = lipzoo.LipLTEstimator(model, shape, n_iter=2, iteration_dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), 5e-2)
    for step in range(3):
        value = graphed()
        torch.testing.assert_close(value, eager(), rtol=1e-6, atol=1e-7)
        for (k, x), y in zip(graphed.vectors().items(), eager.vectors().values()):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=str(k))
        opt.zero_grad()
        value.sum().backward()  # gradients through the vectors the graph returned
        opt.step()  # in place: the next replay must read the new weights
    assert len(fake_capture) == 1  # one layout, one capture
    # a changed weight that is not a parameter update (loaded state): still followed
    with torch.no_grad():
        next(model.parameters()).mul_(-1.5)
    torch.testing.assert_close(graphed(), eager(), rtol=1e-6, atol=1e-7)
    # another iteration count is another graph
    torch.testing.assert_close(graphed(n_iter=1), eager(n_iter=1), rtol=1e-6, atol=1e-7)
    assert len(fake_capture) == 2


def test_graphed_estimator_falls_back_when_capture_fails(fake_capture, monkeypatch, caplog):
    from lipzoo.bounds import graphs

    def refuse(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs.IterationGraph, "_capture", refuse)
    model = lipzoo.create_model("4c3f")
    graphed = lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=2, cuda_graph=True)
    eager = lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=2)
    with caplog.at_level("WARNING", logger="lipzoo.bounds.estimator"):
        torch.testing.assert_close(graphed(), eager())
        torch.testing.assert_close(graphed(), eager())
    assert graphed._graph is None and graphed._graph_failed
    assert sum("could not be captured" in r.getMessage() for r in caplog.records) == 1
