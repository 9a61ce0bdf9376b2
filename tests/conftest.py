"""Shared test fixtures and named tolerances.

Use the tolerances through the ``tol`` fixture (``tol.FLOAT32_RTOL``) or import them from this
module; add new ones here with a comment saying what they cover.
"""

from __future__ import annotations

import contextlib

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# Float64 reference vs float64 implementation of the same formula: only summation order differs.
FLOAT64_ATOL = 1e-10
FLOAT64_RTOL = 1e-10
# Float32 implementation vs float64 reference (a few ulps times the depth of the computation).
FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-5
# Relative slack allowed on an l2 perturbation norm returned by an attack (float rounding).
PERTURBATION_NORM_RTOL = 1e-6

TOLERANCES = SimpleNamespace(
    FLOAT64_ATOL=FLOAT64_ATOL,
    FLOAT64_RTOL=FLOAT64_RTOL,
    FLOAT32_ATOL=FLOAT32_ATOL,
    FLOAT32_RTOL=FLOAT32_RTOL,
    PERTURBATION_NORM_RTOL=PERTURBATION_NORM_RTOL,
)

SHARED_DATA = Path(os.environ.get("LIPZOO_SHARED_DATA", "/work/shared/data"))


@pytest.fixture
def tol() -> SimpleNamespace:
    """The named tolerances above."""
    return TOLERANCES


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator (fresh per test)."""
    return np.random.default_rng(0)


@pytest.fixture
def torch_gen() -> torch.Generator:
    """A seeded CPU torch generator (fresh per test)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset ``LIPZOO_DATA`` so that the default data resolution is tested."""
    monkeypatch.delenv("LIPZOO_DATA", raising=False)


@pytest.fixture
def write_npz(tmp_path: Path):
    """Factory writing a small Keras-layout archive: ``write_npz(name, **arrays) -> Path``."""

    def _write(name: str = "data.npz", **arrays: np.ndarray) -> Path:
        path = tmp_path / name
        np.savez_compressed(path, **arrays)
        return path

    return _write


@pytest.fixture
def linear_model():
    """Factory for a bias-carrying linear classifier on flattened inputs: ``linear_model(W, b)``."""

    def _make(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return torch.nn.Sequential(torch.nn.Flatten(1), layer)

    return _make


def tiny_builder(arch: str, default_classes: int):
    """A registry builder for a tiny 1x8x8 network: Normalize, two strided convs, Flatten, readout."""
    from lipzoo.layers import Flatten, LTConv2d, LTLinear, Normalize
    from lipzoo.models.base import LipschitzSequential

    def builder(num_classes: int = default_classes, *, mean=(0.5,), std=(0.25,)):
        layers = [Normalize(mean, std), LTConv2d(1, 4, 3, stride=2, padding=1),
                  LTConv2d(4, 4, 3, stride=2, padding=1), Flatten(), LTLinear(16, num_classes, activation=None)]
        return LipschitzSequential(layers, architecture=arch, input_shape=(1, 8, 8))

    builder.__name__ = "lipzoo_" + arch.replace("-", "_")
    return builder


def register_tiny(monkeypatch: pytest.MonkeyPatch, arch: str, default_classes: int) -> str:
    """Register a tiny architecture in a scratch registry (restored after the test; no timm hook)."""
    from lipzoo.models import registry

    monkeypatch.setattr(registry.REGISTRY, "_archs", dict(registry.REGISTRY._archs))
    monkeypatch.setattr(registry.REGISTRY, "_listeners", [])
    registry.register_model(tiny_builder(arch, default_classes))
    return arch


@pytest.fixture
def one_thread():
    """One intra-op thread (restored afterwards): on a loaded 2-core machine the thread pool makes
    tiny operators ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def interrupted_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int = 2, at_call: int = 2):
    """Run the body with the trainer stopping by ``KeyboardInterrupt`` at the ``at_call``-th step of
    ``epoch`` (0-based): after an optimizer step changed the weights, the estimator vectors and the
    RNG, as a real interrupt would. The body must raise it; the trainer is restored afterwards."""
    from lipzoo.train import trainer

    original = trainer._Run.loss
    seen = [0]

    def loss(self, x, y, regularize):
        if self.epoch == epoch:
            seen[0] += 1
            if seen[0] == at_call:
                raise KeyboardInterrupt
        return original(self, x, y, regularize)

    monkeypatch.setattr(trainer._Run, "loss", loss)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(trainer._Run, "loss", original)


@pytest.fixture(autouse=True)
def _no_shared_bound_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's bound cache, and none sees another test's bounds: the
    ``lipzoo`` command line would otherwise turn on ``~/.cache/lipzoo/bounds`` for the whole test
    process. Tests of the cache set ``LIPZOO_CACHE`` themselves."""
    monkeypatch.setenv("LIPZOO_CACHE", "off")


def small_plain_cnn(seed: int):
    """A float64 plain CNN with normalisation, strided conv and dense layers, and its input shape (the
    proved-path tests compare it against dense exact norms)."""
    from lipzoo.layers import Flatten, LTConv2d, LTLinear, Normalize

    torch.manual_seed(seed)
    return torch.nn.Sequential(Normalize([0.4, 0.5], [0.2, 0.3]), LTConv2d(2, 4, 3, 1, 1), LTConv2d(4, 4, 4, 2, 1),
                               LTConv2d(4, 5, 3, 1, 1), Flatten(), LTLinear(5 * 4 * 4, 12),
                               LTLinear(12, 4, activation=None)).double().eval(), (2, 8, 8)


def small_residual_cnn(seed: int):
    """A float64 CNN with two residual LT blocks, and its input shape."""
    from lipzoo.layers import Flatten, LTConv2d, LTLinear, LTResidualConv

    torch.manual_seed(seed)
    return torch.nn.Sequential(LTConv2d(1, 3, 3, 1, 1), LTResidualConv(3, 4, 3), LTResidualConv(3, 4, 3), Flatten(),
                               LTLinear(3 * 6 * 6, 5, activation=None)).double().eval(), (1, 6, 6)


def vouched(value, model, input_shape=None, guarantee: str = "exact", failure_probability=None):
    """A bound the *test* knows (exact constants of a linear model, or one deliberately wrong), vouched for
    ``model`` through the accountant's private hook: the public API cannot mint a certificate (issue 22), so
    tests of the consumers' logic say explicitly that they vouch for their numbers."""
    from torch import nn

    from lipzoo.bounds.fingerprint import model_fingerprint
    from lipzoo.bounds.certificate import LipschitzBound, _vouch

    if input_shape is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        input_shape = (first.in_features,)
    fp = model_fingerprint(model, input_shape)
    return _vouch(LipschitzBound(value=value, guaranteed=guarantee in ("exact", "proved"), guarantee=guarantee,
                                 failure_probability=failure_probability, fingerprint=fp.digest,
                                 model_summary=fp.summary))
