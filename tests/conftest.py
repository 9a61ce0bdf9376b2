"""Shared test fixtures and named tolerances.

Use the tolerances through the ``tol`` fixture (``tol.FLOAT32_RTOL``) or import them from this
module; add new ones here with a comment saying what they cover.
"""

from __future__ import annotations

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
