"""Turn a model into the layered structure of the paper's eq. (14).

Every module contributes a :class:`~lipzoo.layers.LipschitzState`. Affine states (``alpha == beta``:
normalisation, flatten, pooling, batch norm, a readout ``LTLinear(activation=None)``) are folded
into the next non-linear block (``W <- W P``, ``H <- H P``) or, after the last one, into the output
map ``W_L``. What remains is

    y_k = W_k x_k,    x_{k+1} = H_k x_k + G_k phi_k(y_k),    k = 0 .. L-1,    z = W_L x_L,

with all shapes resolved for the given input shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from lipzoo.layers.operators import LinearOperator, ScaleOp, SumOp, compose
from lipzoo.layers.torch_modules import (check_declared_forward, check_finite_weights, check_hooks, check_sequential,
                                         check_state_weights, module_state)

Shape = tuple[int, ...]

__all__ = ["Block", "Structure", "build_structure", "flatten_modules"]


@dataclass
class Block:
    """One non-linear layer with resolved shapes (``H=None``: zero, ``G=None``: identity)."""

    W: LinearOperator
    H: LinearOperator | None
    G: LinearOperator | None
    alpha: float
    beta: float
    x_shape: Shape  # input x_k
    y_shape: Shape  # pre-activation y_k
    next_shape: Shape  # x_{k+1}
    elementwise: bool = True  # False: phi is a Lipschitz map of the whole y (LipschitzState.elementwise)

    @property
    def c(self) -> float:
        """``(alpha + beta) / 2``: the slope the loop transformation moves into the linear part."""
        return (self.alpha + self.beta) / 2

    @property
    def d(self) -> float:
        """``(beta - alpha) / 2``: the Lipschitz constant of the transformed activation."""
        return (self.beta - self.alpha) / 2

    @property
    def slope(self) -> float:
        """Lipschitz constant of ``phi`` itself: ``max(|alpha|, |beta|)``."""
        return max(abs(self.alpha), abs(self.beta))

    def H_hat(self) -> LinearOperator:
        """``H + (alpha+beta)/2 * G W`` (paper, eq. 16)."""
        main = compose(ScaleOp(self.c), self.G, self.W)
        return main if self.H is None else SumOp([self.H, main])


@dataclass
class Structure:
    blocks: list[Block]
    output: LinearOperator | None  # W_L; None is the identity
    input_shape: Shape
    output_shape: Shape

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def space_shape(self, t: int, j: int) -> tuple[Shape, Shape]:
        """Input and output shapes of ``S_{t,j} = W_t Hhat_{t-1} ... Hhat_{j+1} G_j`` (j = -1: from x_0)."""
        src = self.input_shape if j < 0 else self.blocks[j].y_shape
        dst = self.output_shape if t == self.depth else self.blocks[t].y_shape
        return src, dst

    def to(self, dtype: torch.dtype) -> "Structure":
        """The same structure with every operator's weights cast to ``dtype`` (:meth:`LinearOperator.to`)."""
        cast = (lambda op: None if op is None else op.to(dtype))
        blocks = [dataclasses.replace(b, W=b.W.to(dtype), H=cast(b.H), G=cast(b.G)) for b in self.blocks]
        return dataclasses.replace(self, blocks=blocks, output=cast(self.output))

    def chain(self, t: int, j: int) -> list[LinearOperator]:
        """The factors of ``S_{t,j}``, leftmost first (``None`` factors dropped)."""
        W_t = self.output if t == self.depth else self.blocks[t].W
        factors = [W_t] + [self.blocks[s].H_hat() for s in range(t - 1, j, -1)]
        if j >= 0:
            factors.append(self.blocks[j].G)
        return [f for f in factors if f is not None]


def flatten_modules(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of a (nested) ``nn.Sequential`` in execution order.

    Containers are checked to compute exactly the chain of their children: no forward hooks, and
    no ``nn.Sequential`` subclass with its own ``forward`` (e.g. ``x + block(x)``); a module with
    ``lipschitz_modules()`` must not redefine ``forward`` below the class that declares it.
    """
    if hasattr(model, "lipschitz_state"):
        return [model]  # module_state checks it and its submodules
    # a container: its children are checked as they are visited (all of them for a custom one)
    check_hooks(model, recurse=hasattr(model, "lipschitz_modules"))
    if hasattr(model, "lipschitz_modules"):
        check_declared_forward(model, "lipschitz_modules")
        return [m for sub in model.lipschitz_modules() for m in flatten_modules(sub)]  # type: ignore[operator]
    if isinstance(model, nn.Sequential):
        check_sequential(model)
        return [m for sub in model for m in flatten_modules(sub)]
    if type(model) in (nn.parallel.DistributedDataParallel, nn.DataParallel):
        return flatten_modules(model.module)  # type: ignore[arg-type]
    return [model]  # a leaf: module_state checks it


def _check_input_shape(input_shape) -> Shape:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a tuple of ints without the batch dimension, e.g. (3, 32, 32); "
                         f"got {input_shape!r}.") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be non-empty with positive sizes, got {input_shape!r}.")
    return shape


def build_structure(model: nn.Module, input_shape, *, check_weights: bool = True) -> Structure:
    """Compose the modules of ``model`` into blocks of eq. (14) for inputs of ``input_shape``.

    Every module's weights are checked before its state is used (no norm is computed here): an empty
    layer (``nn.Linear(4, 0)``), a NaN / inf parameter or buffer, or a state weight above
    :data:`lipzoo.layers.torch_modules.MAX_WEIGHT_MAGNITUDE` raises a one-line ``ValueError`` naming
    the module by its path in ``model`` (:func:`~lipzoo.layers.torch_modules.check_finite_weights`,
    :func:`~lipzoo.layers.torch_modules.check_state_weights`).
    """
    shape = _check_input_shape(input_shape)
    blocks: list[Block] = []
    pending: LinearOperator | None = None  # affine maps not yet attached to a block
    pending_in: Shape = shape  # the shape pending acts on
    current: Shape = shape  # shape after pending
    paths = {id(m): n for n, m in model.named_modules()}
    modules = flatten_modules(model)
    names = [paths.get(id(m)) or None for m in modules]
    if check_weights:  # the training estimator skips it: a per-step host sync, and no certificate is made there
        check_finite_weights(modules, names)  # before any state: NaN / inf / empty weights, named
    states = []
    for module, name in zip(modules, names):
        state = module_state(module)
        states.append((state, module, name))
        if state.is_linear:
            lin = state.as_linear()
            try:
                current = lin.out_shape(current)
            except Exception as err:  # a shape the layer cannot take
                raise ValueError(f"Module {module!r} cannot take inputs of shape {current} "
                                 f"(from input_shape={shape}): {err}") from err
            pending = compose(lin, pending)
            continue
        W = compose(state.W, pending)
        H = compose(state.H, pending) if state.H is not None else None
        try:
            y_shape = W.out_shape(pending_in)
            next_shape = state.G.out_shape(y_shape) if state.G is not None else y_shape
            if H is not None and H.out_shape(pending_in) != next_shape:
                raise ValueError(f"skip branch gives {H.out_shape(pending_in)}, main branch {next_shape}")
        except Exception as err:
            raise ValueError(f"Module {module!r} cannot take inputs of shape {current} "
                             f"(from input_shape={shape}): {err}") from err
        blocks.append(Block(W, H, state.G, state.alpha, state.beta, pending_in, y_shape, next_shape,
                            state.elementwise))
        pending, pending_in, current = None, next_shape, next_shape
    if check_weights:
        check_state_weights(states)  # still before any norm: non-finite or absurd operator weights, named
    if not blocks and pending is None:
        raise TypeError(f"Model {type(model).__name__} has no layers to bound.")
    return Structure(blocks, pending, shape, current)


def numel(shape: Shape) -> int:
    return math.prod(shape)


def materialize(op: LinearOperator, in_shape: Shape, *, dtype=torch.float64, device=None,
                chunk: int = 256) -> torch.Tensor:
    """The dense matrix of ``op`` (``out_dim x in_dim``) or its transpose, whichever is cheaper.

    Pushes an identity basis of the smaller side through the operator (forward or adjoint) in
    chunks. Returns a ``(min_dim, max_dim)`` matrix ``M`` with the same singular values as ``op``.
    """
    out_shape = op.out_shape(in_shape)
    n_in, n_out = numel(in_shape), numel(out_shape)
    small, shape, apply = ((n_in, in_shape, op.forward) if n_in <= n_out
                           else (n_out, out_shape, lambda y: op.adjoint(y, in_shape)))
    rows = []
    for start in range(0, small, chunk):
        idx = torch.arange(start, min(start + chunk, small), device=device)
        basis = torch.zeros(len(idx), small, dtype=dtype, device=device)
        basis[torch.arange(len(idx), device=device), idx] = 1.0
        rows.append(apply(basis.reshape(len(idx), *shape)).reshape(len(idx), -1))
    return torch.cat(rows, 0)
