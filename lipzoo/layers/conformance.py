"""Conformance check for layers that declare ``lipschitz_state()``.

A certificate is only as good as the state a layer declares. :func:`check_lipschitz_state` checks a
layer against its own ``forward`` on a small input, in float64, with dense matrices:

1. **Jacobian.** At random points ``x`` the autograd Jacobian of ``forward`` equals
   ``H + G diag(phi'(W x + bias)) W`` (``phi'`` from the state's ``activation`` at the state's
   ``bias``), or ``H + alpha G W`` for an affine state.
2. **Adjoints.** ``<A x, y> = <x, A^T y>`` for every operator of the state and every operator inside
   it (compositions, sums, adjoints).
3. **Norm bounds.** ``norm_bound`` of every operator is at least its exact spectral norm (dense SVD).
4. **Slopes.** Derivatives and difference quotients of the activation, sampled over ``[-60, 60]``
   and at the layer's own pre-activations, lie in the declared ``[alpha, beta]`` (a jump shows up as a
   huge quotient). For a state whose ``phi`` is not coordinatewise (``elementwise=False``: sorts,
   max-min, window norms), check 1 uses ``phi``'s full Jacobian, and check 4 samples the claim itself:
   ``||psi(y) - psi(y')|| <= d ||y - y'||`` with ``psi = phi - c id``, ``c, d = (alpha+beta)/2, (beta-alpha)/2``,
   for pairs ``y = W x + bias`` on the range of ``W`` (far apart, close, and with ties).

Authors of new layers: run it in your tests (``check_lipschitz_state(MyLayer(...), (3, 6, 6))``),
after a few optimizer steps as well as at initialisation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lipzoo.layers.operators import AdjointOp, ComposeOp, LinearOperator, SumOp
from lipzoo.layers.state import LipschitzState

__all__ = ["check_lipschitz_state", "ConformanceReport"]

Shape = tuple[int, ...]


@dataclass
class ConformanceReport:
    """What :func:`check_lipschitz_state` checked and found.

    Attributes:
        layer: ``repr`` of the checked layer (first line).
        input_shape, output_shape: shapes without batch dimension.
        alpha, beta: the declared slopes.
        sampled_slopes: smallest and largest slope seen (derivatives and difference quotients).
        jacobian_error: largest entrywise ``|J - (H + G diag(phi') W)|`` over the points, relative to
            ``max |J|``.
        norm_ratios: ``norm_bound / exact norm`` per operator (``>= 1`` when sound).
        checks: descriptions of the checks that passed.
        failures: descriptions of the checks that failed (empty: the layer conforms).
    """

    layer: str
    input_shape: Shape
    output_shape: Shape
    alpha: float
    beta: float
    sampled_slopes: tuple[float, float] | None = None
    jacobian_error: float = 0.0
    norm_ratios: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"check_lipschitz_state({self.layer}, {self.input_shape}) -> {self.output_shape}: "
                 f"{'OK' if self.ok else 'FAILED'}"]
        lines += [f"  ok: {c}" for c in self.checks]
        lines += [f"  FAILED: {f}" for f in self.failures]
        return "\n".join(lines)


def _dense(op: LinearOperator, in_shape: Shape) -> torch.Tensor:
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    return op.forward(eye).reshape(n, -1).T  # (out, in)


def _operators(op: LinearOperator, in_shape: Shape, path: str):
    """``op`` and every operator inside it, with their input shapes."""
    yield op, tuple(in_shape), path
    if isinstance(op, ComposeOp):
        shapes = op._shapes(in_shape)
        for i, sub in enumerate(reversed(op.ops)):
            yield from _operators(sub, shapes[i], f"{path}.ops[{len(op.ops) - 1 - i}]")
    elif isinstance(op, SumOp):
        for i, sub in enumerate(op.ops):
            yield from _operators(sub, in_shape, f"{path}.ops[{i}]")
    elif isinstance(op, AdjointOp):
        yield from _operators(op.op, op.base_in_shape, f"{path}.op")


def _slope_samples(act, y_shape: Shape, ys: list[torch.Tensor], gen: torch.Generator) -> tuple[float, float]:
    """Smallest and largest derivative and difference quotient of ``act`` seen on samples of ``y_shape``."""
    n = math.prod(y_shape)
    grid = torch.linspace(-60.0, 60.0, 6001, dtype=torch.float64)
    rows = [grid[torch.randperm(grid.numel(), generator=gen)[: n * 4]].reshape(-1) for _ in range(3)]
    base = torch.cat(rows + [torch.randn(8 * n, generator=gen, dtype=torch.float64) * s for s in (0.3, 1.0, 3.0, 10.0)]
                     + [y.reshape(-1) for y in ys])
    base = base[: (base.numel() // n) * n].reshape(-1, *y_shape)
    lo, hi = math.inf, -math.inf
    # derivatives
    y = base.clone().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(act(y).sum(), y)
    lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
    # difference quotients over steps from 1e-4 to 10 (a jump gives a huge quotient)
    with torch.no_grad():
        fa = act(base)
        for step in (1e-4, 1e-2, 0.3, 3.0, 10.0):
            delta = (torch.rand(base.shape, generator=gen, dtype=torch.float64) + 0.5) * step
            q = (act(base + delta) - fa) / delta
            lo, hi = min(lo, float(q.min())), max(hi, float(q.max()))
    return lo, hi


def _map_quotient(act, state: LipschitzState, W: LinearOperator, in_shape: Shape, gen: torch.Generator) -> float:
    """Largest ``||psi(y) - psi(y')|| / ||y - y'||`` seen, ``psi = phi - c id``, over pairs on the range of ``W``."""
    c = (state.alpha + state.beta) / 2
    bias = 0.0 if state.bias is None else state.bias

    def psi(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = W.forward(x) + bias
        return (act(y) - c * y).flatten(1), y.flatten(1)

    n = 64
    x = torch.randn(n, *in_shape, generator=gen, dtype=torch.float64)
    x = x * torch.logspace(-2, 2, n, dtype=torch.float64).reshape(-1, *[1] * len(in_shape))
    ties = torch.randint(-2, 3, (n, *in_shape), generator=gen).to(torch.float64)  # repeated values: sort ties
    worst = 0.0
    with torch.no_grad():
        for a in (x, ties):
            for step in (None, 1e-6, 1e-2, 1.0):
                b = (a[torch.randperm(n, generator=gen)] if step is None
                     else a + step * torch.randn(a.shape, generator=gen, dtype=torch.float64))
                (pa, ya), (pb, yb) = psi(a), psi(b)
                dy = (ya - yb).norm(dim=1)
                keep = dy > 0
                if bool(keep.any()):
                    worst = max(worst, float(((pa - pb).norm(dim=1)[keep] / dy[keep]).max()))
    return worst


def check_lipschitz_state(layer: nn.Module, input_shape, *, n_points: int = 4, seed: int = 0,
                          rtol: float = 1e-8, max_dense: int = 4096, raise_on_failure: bool = True
                          ) -> ConformanceReport:
    """Check that ``layer.lipschitz_state()`` (or the state lipzoo assigns to a torch module) is true.

    Args:
        layer: the module (not changed: a float64 copy on the CPU is checked, in the layer's own mode).
        input_shape: a small per-sample input shape, e.g. ``(2, 6, 6)``; every operator is
            materialised, so keep its sizes under ``max_dense``.
        n_points: random points for the Jacobian comparison.
        seed: seed of the random points.
        rtol: tolerance of the Jacobian comparison, relative to ``max |J|``.
        max_dense: refuse shapes with more dimensions than this (dense matrices are built).
        raise_on_failure: raise ``ValueError`` listing the failures (otherwise return the report).

    Returns:
        a :class:`ConformanceReport`.

    Raises:
        TypeError: the accountant refuses the layer (the message says why).
        ValueError: a check failed (when ``raise_on_failure``), or the shapes are too large.
    """
    from lipzoo.layers.torch_modules import module_state  # torch_modules imports this package's layers

    in_shape = tuple(int(s) for s in input_shape)
    net = copy.deepcopy(layer).to("cpu", torch.float64)
    state: LipschitzState = module_state(net)
    gen = torch.Generator().manual_seed(seed)
    W, H, G = state.W, state.H, state.G
    y_shape = tuple(W.out_shape(in_shape))
    out_shape = tuple(G.out_shape(y_shape)) if G is not None else y_shape
    first_line = repr(layer).splitlines()[0]
    report = ConformanceReport(first_line, in_shape, out_shape, float(state.alpha), float(state.beta))
    sizes = [math.prod(in_shape), math.prod(y_shape), math.prod(out_shape)]
    if max(sizes) > max_dense:
        raise ValueError(f"check_lipschitz_state builds dense matrices: input_shape={in_shape} gives spaces of "
                         f"{sizes} dimensions (max_dense={max_dense}); use a smaller input_shape.")
    fail = report.failures.append

    # -- 2, 3: adjoints and norm bounds of every operator ---------------------------------------------
    named = [("W", W, in_shape)] + ([("H", H, in_shape)] if H is not None else []) + \
            ([("G", G, y_shape)] if G is not None else [])
    if H is not None and tuple(H.out_shape(in_shape)) != out_shape:
        fail(f"H maps {in_shape} to {tuple(H.out_shape(in_shape))} but G W to {out_shape}")
    n_ops = 0
    with torch.no_grad():
        for name, op, shape in named:
            for sub, sub_in, path in _operators(op, shape, name):
                n_ops += 1
                sub_out = tuple(sub.out_shape(sub_in))
                x = torch.randn(3, *sub_in, generator=gen, dtype=torch.float64)
                y = torch.randn(3, *sub_out, generator=gen, dtype=torch.float64)
                ax = sub.forward(x)
                if tuple(ax.shape[1:]) != sub_out:
                    fail(f"{path} ({type(sub).__name__}): out_shape says {sub_out}, forward gives "
                         f"{tuple(ax.shape[1:])}")
                    continue
                aty = sub.adjoint(y, sub_in)
                lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
                scale = float(ax.norm() * y.norm() + x.norm() * aty.norm()) + 1e-300
                if abs(lhs - rhs) > 1e-10 * scale:
                    fail(f"{path} ({type(sub).__name__}): adjoint test <Ax, y> = {lhs:.12g} but <x, A^T y> = "
                         f"{rhs:.12g}")
                dense = _dense(sub, sub_in)
                exact = float(torch.linalg.matrix_norm(dense, ord=2)) if dense.numel() else 0.0
                bound = float(sub.norm_bound(sub_in))
                report.norm_ratios[path] = bound / exact if exact > 0 else math.inf
                if not bound >= exact * (1 - 1e-12):
                    fail(f"{path} ({type(sub).__name__}): norm_bound {bound:.12g} < exact norm {exact:.12g}")
    report.checks.append(f"adjoint test and norm_bound >= exact norm on {n_ops} operator(s)")

    # -- 1: the Jacobian of forward ---------------------------------------------------------------------
    with torch.no_grad():
        Wd = _dense(W, in_shape)
        Hd = _dense(H, in_shape) if H is not None else None
        Gd = _dense(G, y_shape) if G is not None else None
    act, bias = state.activation, state.bias
    if act is None and not state.is_linear:
        fail("the state is non-linear (alpha < beta) but declares no activation: set LipschitzState(activation=..., "
             "bias=...) so that its Jacobian can be checked")
    ys = []
    worst = 0.0
    for i in range(n_points):
        x = torch.randn(1, *in_shape, generator=gen, dtype=torch.float64) * (0.5, 1.0, 2.0, 4.0)[i % 4]
        out = net(x)
        if tuple(out.shape[1:]) != out_shape:
            fail(f"forward gives outputs of shape {tuple(out.shape[1:])}, the state {out_shape}")
            break
        jac = torch.autograd.functional.jacobian(lambda z: net(z.reshape(1, *in_shape)).reshape(-1),
                                                 x.reshape(-1))
        with torch.no_grad():
            if act is not None:
                y = W.forward(x)
                if bias is not None:
                    y = y + bias
                ys.append(y)
                yv = y.reshape(-1)
                act_jac = torch.autograd.functional.jacobian(lambda v: act(v.reshape(1, *y_shape)).reshape(-1), yv)
                if state.elementwise:
                    dphi = act_jac.diagonal()
                    off = (act_jac - torch.diag(dphi)).abs().max()
                    if float(off) > 1e-12 * max(1.0, float(dphi.abs().max())):
                        fail(f"the activation {act!r} is not elementwise (off-diagonal Jacobian {float(off):.3g}); "
                             "a Lipschitz map of the whole pre-activation is declared with elementwise=False")
                        break
                    main = dphi[:, None] * Wd
                else:
                    main = act_jac @ Wd
                if Gd is not None:
                    main = Gd @ main
            else:
                main = state.alpha * (Gd @ Wd if Gd is not None else Wd)
            model = main if Hd is None else Hd + main
            err = float((jac - model).abs().max()) / max(float(jac.abs().max()), 1e-300)
            worst = max(worst, err)
    report.jacobian_error = worst
    if worst > rtol:
        fail(f"the Jacobian of forward differs from H + G diag(phi') W by {worst:.3g} (relative to max |J|): the "
             "state does not describe forward")
    else:
        report.checks.append(f"Jacobian of forward = H + G diag(phi') W at {n_points} points (error {worst:.2g})")

    # -- 4: slopes --------------------------------------------------------------------------------------
    if act is not None and not state.elementwise:
        q = _map_quotient(act, state, W, in_shape, gen)
        d = (state.beta - state.alpha) / 2
        report.sampled_slopes = (-q, q)
        if q > d * (1 + 1e-9) + 1e-12:
            fail(f"{act!r} minus {(state.alpha + state.beta) / 2:.9g} id moved by {q:.9g} times the move of its input on "
                 f"the range of W, above the declared (beta - alpha)/2 = {d:.9g}")
        else:
            report.checks.append(f"phi - c id moved by at most {q:.6g} x its input on sampled pairs of the range of W "
                                 f"(declared {d:.6g})")
    elif act is not None:
        lo, hi = _slope_samples(act, y_shape, ys, gen)
        report.sampled_slopes = (lo, hi)
        tol = 1e-7
        if lo < state.alpha - tol or hi > state.beta + tol:
            fail(f"sampled slopes of {act!r} span [{lo:.9g}, {hi:.9g}], outside the declared "
                 f"[{state.alpha:.9g}, {state.beta:.9g}]")
        else:
            report.checks.append(f"sampled slopes [{lo:.6g}, {hi:.6g}] within declared "
                                 f"[{state.alpha:.6g}, {state.beta:.6g}]")
    if report.failures and raise_on_failure:
        raise ValueError(f"Layer {first_line} does not conform to its lipschitz_state():\n{report}")
    return report
