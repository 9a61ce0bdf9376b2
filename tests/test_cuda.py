"""The CUDA side: the estimator, the device-resident loader, training and resume on a GPU.

Run on a machine with a GPU with ``python -m pytest -m gpu tests/test_cuda.py``; skipped elsewhere
(the default run deselects the ``gpu`` marker). Each test compares against the same computation on
the CPU, so it can fail.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lipzoo
from conftest import register_tiny
from lipzoo.cli import main
from lipzoo.data import DeviceAugment, DeviceLoader

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_estimator_follows_model_cuda():
    torch.manual_seed(0)
    model = lipzoo.create_model("4c3f")
    est = lipzoo.LipLTEstimator(model, (1, 28, 28), n_iter=3)
    cpu = est(n_iter=0)
    model.cuda()  # moved after the estimator was built: its vectors must follow
    gpu = est(n_iter=0)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-3, atol=1e-5)


def test_device_loader_matches_cpu_without_augmentation():
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 3, (50,))
    cpu = list(DeviceLoader(images, labels, 16, device="cpu", seed=3))
    gpu = list(DeviceLoader(images, labels, 16, device="cuda", seed=3))
    assert len(cpu) == len(gpu) == 4
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        # the same order; x / 255 may differ in the last bit (CUDA divides through a reciprocal)
        assert xg.device.type == "cuda" and torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-7)


def test_device_augment_integer_shifts_are_exact_on_cuda():
    x = torch.rand(64, 3, 16, 16, device="cuda")
    out = DeviceAugment([{"affine": {"degrees": 0, "translate": 0.25}}], (16, 16))(
        x, torch.Generator(device="cuda").manual_seed(0))
    # every output row is the input shifted by whole pixels with zero fill: its nonzero values are
    # a subset of the input's values
    for i in range(8):
        vals = set(out[i][out[i] != 0].tolist())
        assert vals <= set(x[i].flatten().tolist())


def test_train_and_resume_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arch = register_tiny(monkeypatch, "cuda-tiny", 10)
    root = tmp_path / "data"
    root.mkdir()
    g = np.random.default_rng(0)
    np.savez(root / "mnist.npz", x_train=g.integers(0, 256, (96, 8, 8), dtype=np.uint8),
             y_train=g.integers(0, 4, 96).astype(np.uint8), x_test=g.integers(0, 256, (32, 8, 8), dtype=np.uint8),
             y_test=g.integers(0, 4, 32).astype(np.uint8))
    entry = {"name": "cuda-tiny-test", "architecture": arch, "model_args": {}, "num_classes": 10,
             "input_shape": [1, 8, 8], "dataset": "mnist", "normalization": {"mean": [0.5], "std": [0.25]},
             "recipe": {"loss": "crm", "epochs": 3, "batch_size": 24,
                        "optimizer": {"name": "adam", "lr": 1.0e-2, "betas": [0.9, 0.999], "eps": 1.0e-7},
                        "scheduler": {"name": "exponential", "start_epoch": 1, "final_lr": 1.0e-4},
                        "augmentation": ["hflip", {"affine": {"degrees": 10, "translate": 0.1}}],
                        "crm": {"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear", "warmup_epochs": 1},
                        "power_iterations": 2, "validation_split": 0.25},
             "certify": {"eps": ["1/255"]}, "weights": None, "metrics": None}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(entry))

    def run(out: Path, *extra: str) -> int:
        return main(["train", str(recipe), *extra, "--out", str(out), "--data-root", str(root), "--device", "cuda",
                     "--no-progress"])

    assert run(tmp_path / "a") == 0
    # interrupted after epoch 2, resumed: the checkpoint is read to the CPU first (RNG states stay
    # there), then moved; the result equals the uninterrupted run
    assert run(tmp_path / "b", "recipe.epochs=2") == 0
    state = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    state["config"]["recipe"]["epochs"] = 3
    torch.save(state, tmp_path / "b" / "checkpoint.pt")
    assert run(tmp_path / "b", "--resume") == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["train_loss"]) for r in rows)


# ---------------------------------------------------------------- guaranteed norms on the GPU

def test_proved_inner_norms_on_cuda_dominate_cpu_exact_norms():
    """Every path of the guaranteed norms (groups, local chains, dense chains, split bounds) run on the GPU,
    each chain against its exact float64 norm computed on the CPU."""
    from conftest import small_plain_cnn, small_residual_cnn
    from lipzoo.bounds import build_structure
    from lipzoo.bounds.proved import proved_inner_norms
    from lipzoo.bounds.structure import materialize
    from lipzoo.layers.operators import compose

    for factory in (small_plain_cnn, small_residual_cnn):
        net, shape = factory(0)
        with torch.no_grad():
            cpu = build_structure(net, shape)
            gpu = build_structure(copy.deepcopy(net).cuda(), shape)  # the CPU structure keeps its tensors
            keys = [(t, j) for t in range(cpu.depth) for j in range(-1, t)]
            for small, effort in [(40, 0.0), (0, "high")]:  # groups on small sides; then every chain refined alone
                got = proved_inner_norms(gpu, keys, objective=lambda inner: sum(inner.values()), small=small,
                                         small_input=small, effort=effort, chunk=16, progress=False,
                                         device=torch.device("cuda"))
                for k in keys:
                    op = compose(*cpu.chain(*k))
                    true = float(torch.linalg.matrix_norm(materialize(op, cpu.space_shape(*k)[0],
                                                                      dtype=torch.float64), ord=2))
                    assert got[k].value >= true, (k, small, got[k])
                    if got[k].guarantee == "exact":
                        assert got[k].value <= true * (1 + 1e-5), (k, got[k].value / true - 1)
                # the refinement certified chains on the GPU (it stops at tol, so not necessarily all)
                assert sum(p.guarantee == "exact" for p in got.values()) >= (len(keys) // 2 if effort else 1)


def test_local_chain_certificate_on_cuda_matches_dense_svd():
    import math

    from lipzoo.bounds.banded import local_plan
    from lipzoo.bounds.gram import certified_chain_norm
    from lipzoo.bounds.steps import gram_steps
    from lipzoo.layers.operators import Conv2dOp

    g = torch.Generator().manual_seed(0)
    convs = [Conv2dOp(torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) / 5, 1, 1),
             Conv2dOp(torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64) / 4, 2, 1)]
    shape = (2, 30, 17)
    steps, side, n = gram_steps(convs, shape)
    plan = local_plan(steps, side)
    assert plan is not None and plan.blocks > 1
    x = torch.eye(math.prod(shape), dtype=torch.float64).reshape(-1, *shape)
    for op in reversed(convs):
        x = op.forward(x)
    exact = float(torch.linalg.matrix_norm(x.reshape(x.shape[0], -1), ord=2))
    on_gpu = [Conv2dOp(c.weight.cuda(), c.stride, c.padding) for c in convs]
    got = certified_chain_norm(on_gpu, shape, chunk=32, device="cuda")
    assert exact <= got <= exact * (1 + 1e-6)


# ---------------------------------------------------------------- the estimator's CUDA graph

@pytest.mark.parametrize("name,dtype", [("4c3f", None), ("lt-res-s", None), ("6c2f", torch.bfloat16)])
def test_estimator_cuda_graph_matches_eager_through_training_steps(name, dtype, monkeypatch):
    # one model, both estimators (a first version trained two copies with Adam: its sign-like first steps
    # turned float differences into different weights); TF32 off, so that both run the same arithmetic
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = lipzoo.create_model(name).cuda()
    shape = tuple(model.input_shape)
    graphed = lipzoo.LipLTEstimator(model, shape, n_iter=3, iteration_dtype=dtype, cuda_graph=True)
    eager = lipzoo.LipLTEstimator(model, shape, n_iter=3, iteration_dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), 5e-2)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype is None else dict(rtol=2e-2, atol=2e-3)
    graph = None
    for step in range(4):  # the optimizer changes the weights in place; each replay must read them
        value = graphed()
        torch.testing.assert_close(value, eager(), **tol)
        for (k, x), y in zip(graphed.vectors().items(), eager.vectors().values()):
            torch.testing.assert_close(x, y, **tol, msg=str(k))
        assert graphed._graph is not None and eager._graph is None
        graph = graph or graphed._graph
        assert graphed._graph is graph  # captured once, replayed at every step
        opt.zero_grad()
        value.sum().backward()
        opt.step()
    # another iteration count is another graph, with the same result as the eager iteration
    torch.testing.assert_close(graphed(n_iter=1), eager(n_iter=1), **tol)
    assert graphed._graph is not graph
