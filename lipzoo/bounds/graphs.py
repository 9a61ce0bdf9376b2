"""The training estimator's power iterations as one CUDA graph.

On a GPU the batched sweep is launch-bound: one float32 iteration of 4C3F / 6C2F / 8C2F runs ~100-180
small kernels, and a CUDA graph of it replayed 0.09 / 0.09 / 0.15 of the time of the eager iteration on
an H100 (``bench/accountant.py --device cuda``, part (e)). The graph is captured once per *layout* of
the structure and replayed with the current weights copied in:

* :func:`structure_tensors` walks a :class:`~lipzoo.bounds.structure.Structure` (blocks, operators, their
  nested operators) and returns its tensors in a fixed order together with a *signature*: every type,
  every non-tensor attribute (slopes, strides, scalars, shapes) and every tensor's shape, dtype and
  device. Two structures with equal signatures run the same kernels on the same shapes.
* :class:`IterationGraph` clones the tensors once (the graph reads those clones), captures
  ``power_iteration`` on the clones, and at each call copies the freshly built structure's tensors
  and the start vectors in, replays, and returns clones of the results.

So weights updated in place by an optimizer, weights derived from parameters (normalized or
composed kernels, rebuilt by :func:`~lipzoo.bounds.structure.build_structure` at every call), replaced
parameters (``model.to(...)``) and changed constants all reach the graph or force a new capture;
nothing is read from memory the graph does not own. The result is the eager iteration's, up to the
order of floating-point operations: tests/test_graphs.py checks the bookkeeping on the CPU with a
simulated capture; tests/test_cuda.py checks the graph itself and has yet to pass on a GPU (its first
version failed for a reason of its own, docs/benchmarks.md), which is why ``LipLTEstimator`` leaves it
off by default.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from lipzoo.bounds.structure import Structure
from lipzoo.bounds.sweep import power_iteration
from lipzoo.layers.operators import LinearOperator

__all__ = ["IterationGraph", "rebind", "structure_tensors"]


def _walk(value, tensors: list, rebuild):
    """``(signature, copy)`` of ``value``: tensors appended to ``tensors`` in visiting order and, in the copy
    (only with ``rebuild``), replaced by ``rebuild(tensor)``."""
    out: Any  # the copy, of value's type
    parts: Any
    if torch.is_tensor(value):
        tensors.append(value)
        return ("tensor", tuple(value.shape), value.dtype, value.device), \
            (rebuild(value) if rebuild is not None else None)
    if isinstance(value, LinearOperator):
        out = copy.copy(value) if rebuild is not None else None
        sig = []
        for name, v in vars(value).items():
            s, c = _walk(v, tensors, rebuild)
            sig.append((name, s))
            if out is not None:
                setattr(out, name, c)
        return (type(value).__qualname__, tuple(sig)), out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = {f.name: _walk(getattr(value, f.name), tensors, rebuild) for f in dataclasses.fields(value)}
        out = dataclasses.replace(value, **{k: c for k, (_, c) in parts.items()}) if rebuild is not None else None
        return (type(value).__qualname__, tuple((k, s) for k, (s, _) in parts.items())), out
    if isinstance(value, (list, tuple)):
        parts = [_walk(v, tensors, rebuild) for v in value]
        return (type(value).__qualname__, tuple(s for s, _ in parts)), \
            (type(value)(c for _, c in parts) if rebuild is not None else None)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        return value, value
    raise TypeError(f"cannot capture a structure holding {type(value).__name__}")


def structure_tensors(structure: Structure) -> tuple[tuple, list[torch.Tensor]]:
    """``(signature, tensors)`` of ``structure`` (see the module docstring)."""
    tensors: list = []
    sig, _ = _walk(structure, tensors, None)
    return sig, tensors


def rebind(structure: Structure, rebuild) -> tuple[Structure, list[torch.Tensor]]:
    """A copy of ``structure`` whose every tensor ``t`` is ``rebuild(t)``, and the new tensors in the order of
    :func:`structure_tensors`."""
    new: list = []
    _, out = _walk(structure, [], lambda t: new.append(rebuild(t)) or new[-1])  # type: ignore[func-returns-value]
    return out, new


class IterationGraph:
    """``power_iteration(structure, v, n_iter, dtype=dtype)`` captured in a CUDA graph (see the module docstring).

    Raises ``RuntimeError`` when the iteration cannot be captured (an operation that synchronizes with the
    host); callers fall back to the eager iteration."""

    def __init__(self, structure: Structure, v: dict, n_iter: int, dtype: torch.dtype | None):
        self.signature, _ = structure_tensors(structure)
        self.key = self._key(v, n_iter, dtype)
        with torch.no_grad():
            static, self.tensors = rebind(structure, lambda t: t.detach().clone())
            self.inputs = {k: x.detach().clone() for k, x in v.items()}
            self.run = lambda: power_iteration(static, self.inputs, n_iter, dtype=dtype)
            self.outputs = self._capture()

    def _capture(self) -> dict:
        """Record :attr:`run` in :attr:`graph`; returns the outputs it writes at each replay."""
        device = next(iter(self.inputs.values())).device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS / cuDNN handles, allocator)
            self.run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return self.run()

    def _replay(self) -> None:
        self.graph.replay()

    @staticmethod
    def _key(v: dict, n_iter: int, dtype: torch.dtype | None) -> tuple:
        return n_iter, dtype, tuple((k, tuple(x.shape), x.dtype) for k, x in v.items())

    def matches(self, signature: tuple, v: dict, n_iter: int, dtype: torch.dtype | None) -> bool:
        """Whether the graph runs the iteration for a structure of ``signature`` (:func:`structure_tensors`)."""
        return self._key(v, n_iter, dtype) == self.key and signature == self.signature

    def __call__(self, tensors: list[torch.Tensor], v: dict) -> dict:
        """The iteration from ``v`` with the structure's current ``tensors`` (in :func:`structure_tensors`'
        order, from a structure that :meth:`matches`)."""
        with torch.no_grad():
            for dst, src in zip(self.tensors, tensors, strict=True):
                dst.copy_(src)
            for k, x in self.inputs.items():
                x.copy_(v[k])
            self._replay()
            # clones: the next replay overwrites the outputs, which autograd may still hold
            return {k: x.clone() for k, x in self.outputs.items()}
