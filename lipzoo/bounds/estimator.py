"""The differentiable LipLT bound used during training.

:class:`LipLTEstimator` keeps one warm-started power-iteration vector per inner operator
``S_{t,j}`` of eq. (16) in buffers (so they are saved in its ``state_dict`` and training resumes
exactly), runs a few batched iterations per step without gradients, then evaluates
``||S_{t,j} v||`` with gradients (the derivative of the top singular value is ``u^T dS v`` at
convergence). The output-side norms are exact (rows through one adjoint sweep, with gradients).

The result *under*-estimates the inner norms by however far the power iteration is from
convergence: it is a training signal. Certificates come from :func:`lipzoo.lipschitz_bound`.
"""

from __future__ import annotations

import functools
import logging
from typing import cast

import torch
from torch import nn

from lipzoo.bounds.graphs import IterationGraph, structure_tensors
from lipzoo.bounds.liplt import MODES, _check_choice, liplt_recursion, output_norms, output_rows
from lipzoo.bounds.structure import build_structure
from lipzoo.bounds.sweep import forward_sweep, power_iteration, row_norms

__all__ = ["LipLTEstimator", "native_bfloat16"]

logger = logging.getLogger(__name__)


class LipLTEstimator(nn.Module):
    """Differentiable pairwise / per-class / global LipLT bound of ``model`` with warm starts.

    Args:
        model: the network (kept by reference, not registered as a submodule, so that its
            parameters are not duplicated in this module's ``state_dict``).
        input_shape: per-sample input shape.
        mode: ``"pairwise"`` (default), ``"per_class"`` or ``"global"``.
        n_iter: power iterations per call.
        seed: seed of the initial vectors.
        iteration_dtype: precision of the power iterations (``None``: the model's own;
            ``torch.bfloat16``; ``"auto"``: bfloat16 on CPUs that compute it natively (AVX-512 BF16 or
            AMX), the model's own elsewhere: on an H100 the iteration is launch-bound and bfloat16's
            casts made it 1.18-1.19x slower, ``bench/accountant.py --device cuda``). Only
            the iterated directions are rounded; ``||S v||`` and its gradient are evaluated in the
            model's precision, so the estimate moves by the square of the direction error (within
            ~1e-3 relative of float32 iterations on the zoo models, ``bench/accountant.py``).
        cuda_graph: ``True``: on a CUDA device, run the power iterations as one CUDA graph
            (:mod:`lipzoo.bounds.graphs`: captured once per layout of the network, replayed with the
            current weights; one iteration of 4C3F-8C2F replayed in 0.09-0.15 of its eager time on an
            H100, a CRM step in 0.60-0.89). If the capture fails the eager iteration runs (logged
            once). Off by default until its GPU test (tests/test_cuda.py) has passed on a GPU.

    Call it to get the bound (``(K, K)`` for pairwise) as a tensor that carries gradients.
    """

    _model: nn.Module  # set with object.__setattr__: not a submodule

    def __init__(self, model: nn.Module, input_shape, *, mode: str = "pairwise", n_iter: int = 5,
                 seed: int = 0, iteration_dtype: torch.dtype | str | None = None, cuda_graph: bool = False):
        super().__init__()
        _check_choice("mode", mode, MODES)
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}.")
        if not (iteration_dtype in (None, "auto") or isinstance(iteration_dtype, torch.dtype)
                and iteration_dtype.is_floating_point):
            raise ValueError(f"iteration_dtype must be None, 'auto' or a floating torch.dtype, got {iteration_dtype!r}.")
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph must be True or False, got {cuda_graph!r}.")
        self.iteration_dtype, self.cuda_graph = iteration_dtype, cuda_graph
        self._graph: IterationGraph | None = None
        self._graph_failed = False
        self.mode, self.n_iter, self.input_shape = mode, n_iter, tuple(input_shape)
        object.__setattr__(self, "_model", model)  # plain reference, not a submodule
        structure = build_structure(model, self.input_shape, check_weights=False)  # see forward
        self.keys = [(t, j) for t in range(structure.depth) for j in range(-1, t)]
        gen = torch.Generator().manual_seed(seed)
        ref = next(model.parameters(), torch.empty(0))
        for t, j in self.keys:
            src, _ = structure.space_shape(t, j)
            v = torch.randn(1, *src, generator=gen)
            self.register_buffer(self._name(t, j), (v / v.norm()).to(ref.device, ref.dtype))

    @staticmethod
    def _name(t: int, j: int) -> str:
        return f"v_{t}_{'in' if j < 0 else j}"

    def vectors(self) -> dict:
        return {k: getattr(self, self._name(*k)) for k in self.keys}

    def forward(self, n_iter: int | None = None) -> torch.Tensor:
        model = self._model
        ref, vec = next(model.parameters(), None), next(self.buffers(), None)
        if ref is not None and vec is not None and vec.device != ref.device:
            self.to(ref.device)  # the model moved (model.cuda()) after the estimator was built
        # an estimate for training, not a certificate: no weight checks (each would sync with the device, and a
        # non-finite weight shows up as a non-finite loss, which the trainer reports)
        structure = build_structure(model, self.input_shape, check_weights=False)
        v = self.vectors()
        n = self.n_iter if n_iter is None else n_iter
        if v:
            with torch.no_grad():
                v = self._iterate(structure, v, n, self._iteration_dtype(vec))
                for k, x in v.items():
                    getattr(self, self._name(*k)).copy_(x)
        out = forward_sweep(structure, v, finish=row_norms)  # ||S_k v_k||, one norm per block of keys
        inner = {k: out[k][0] for k in self.keys}
        rows = output_rows(structure, range(-1, structure.depth))
        final = {j: output_norms(r, self.mode) for j, r in rows.items()}
        value, _ = liplt_recursion(structure, inner, final)
        return value

    def _iterate(self, structure, v: dict, n: int, dtype: torch.dtype | None) -> dict:
        """``n`` power iterations from ``v``: replayed from a CUDA graph where one applies, eager otherwise."""
        if n == 0 or not self.cuda_graph or self._graph_failed or not _graphable(next(iter(v.values()))):
            return power_iteration(structure, v, n, dtype=dtype)
        signature, tensors = structure_tensors(structure)
        if self._graph is None or not self._graph.matches(signature, v, n, dtype):
            self._graph = None  # its memory goes back before the new capture
            try:
                self._graph = IterationGraph(structure, v, n, dtype)
            except (RuntimeError, TypeError) as err:
                logger.warning("LipLTEstimator: the power iteration could not be captured in a CUDA graph (%s); "
                               "running it eagerly", err)
                self._graph_failed = True
                return power_iteration(structure, v, n, dtype=dtype)
        return self._graph(tensors, v)

    def _iteration_dtype(self, ref: torch.Tensor | None) -> torch.dtype | None:
        if self.iteration_dtype != "auto":
            return cast("torch.dtype | None", self.iteration_dtype)
        native = ref is not None and ref.device.type == "cpu" and native_bfloat16(ref.device)
        return torch.bfloat16 if native else None

    def extra_repr(self) -> str:
        low = "" if self.iteration_dtype is None else f", iteration_dtype={self.iteration_dtype}"
        graph = ", cuda_graph=True" if self.cuda_graph else ""
        return f"mode={self.mode!r}, n_iter={self.n_iter}, operators={len(self.keys)}{low}{graph}"


def _graphable(x: torch.Tensor) -> bool:
    """Whether the iteration on vectors like ``x`` can run from a CUDA graph: on a CUDA device, outside
    autocast (a graph keeps the precision it was captured with)."""
    return x.is_cuda and not torch.is_autocast_enabled()


@functools.lru_cache(maxsize=None)
def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions and products natively (fast, float32 accumulation):
    CUDA devices that support bfloat16, CPUs with AVX-512 BF16 or AMX tiles (oneDNN). Elsewhere bfloat16
    is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False
