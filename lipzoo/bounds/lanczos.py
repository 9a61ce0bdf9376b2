"""Probabilistic upper bounds on the LipLT inner norms: batched Lanczos from a random start.

A proved bound on ``||S_{t,j}||`` needs the operator's matrix once a side is large (see
:mod:`lipzoo.bounds.proved`), which costs minutes for convolutional networks on a CPU. A bound
that holds *except with a stated, tiny probability* costs a few hundred matrix-vector products,
all operators together, and converges to the true norm (the third option of the guarantees note):

**Theorem** (Kuczyński & Woźniakowski, *SIAM J. Matrix Anal. Appl.* 13(4), 1992, Thm 4.2). Let
``A`` be an ``n x n`` symmetric positive semi-definite matrix and ``b`` uniform on the unit sphere.
The largest Ritz value ``xi_k`` of ``A`` on the Krylov space ``span{b, Ab, ..., A^{k-1} b}`` (what
``k`` Lanczos steps compute) satisfies, for every ``eps`` in ``(0, 1)``,

    P[ xi_k < (1 - eps) lambda_max(A) ]  <=  1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)).

The bound holds for every spectrum (it is a worst case over ``A``), so it needs no assumption on
how fast Lanczos converges for this network. With ``A = S^T S`` or ``S S^T`` (whichever is smaller, size ``n``),
``||S|| <= sqrt(xi_k / (1 - eps))`` except with that probability. For ``m`` operators and a total
failure probability ``delta``, each gets ``delta / m`` (union bound) and ``eps`` solves
``1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)) = delta / m``; ``k - 1`` is used for ``k`` (conservative).
With ``k = 256`` steps, ``n = 32768`` and ``delta = 1e-9`` over 28 operators, ``eps = 3.4e-3``: the
bound is at most 0.17 % above the converged Ritz value.

What the guarantee rests on, stated in :class:`LanczosNorm` and in every bound's ``details``:

* the start vectors are random and independent of the weights (``seed=None`` draws fresh entropy
  from the operating system; a fixed seed makes the result reproducible and the probability is then
  over the choice of that seed, made before the weights were seen);
* the theorem is for exact arithmetic: the Lanczos vectors are re-orthogonalised twice against all
  previous ones in float64, so the computed tridiagonal matrix is that of a matrix within a few
  ``k u ||A||`` of ``A`` (Paige); a relative margin of :data:`ROUNDING_MARGIN` covers this and the
  rounding of the float64 sweeps many times over, as an engineering allowance, not a proof.

So a bound from here is labelled ``guarantee="probabilistic"`` with its ``failure_probability``,
never "exact" or "proved".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from lipzoo.bounds.eigen import ritz_top
from lipzoo.bounds.structure import Structure, numel
from lipzoo.bounds.sweep import adjoint_sweep, forward_sweep

__all__ = ["LanczosNorm", "lanczos_inner_norms", "lanczos_epsilon", "lanczos_estimates", "key_generator",
           "KW_CONSTANT", "ROUNDING_MARGIN", "ESTIMATE_DTYPE", "ESTIMATE_MARGIN"]

KW_CONSTANT = 1.648
"""The constant of the Lanczos failure bound of Kuczyński & Woźniakowski (1992)."""

ROUNDING_MARGIN = 1e-6
"""Relative allowance on each probabilistic norm for floating-point rounding (float64 sweeps and
fully re-orthogonalised Lanczos: the rounding is ~1e-12 relative; this is 1e6 times that)."""


def lanczos_epsilon(n: int, steps: int, failure_probability: float) -> float:
    """The ``eps`` with ``1.648 sqrt(n) exp(-sqrt(eps) (2 (steps - 1) - 1)) = failure_probability``
    (``inf`` when no ``eps < 1`` reaches that probability with this many steps)."""
    k = steps - 1  # conservative: the theorem's k is the Krylov dimension, ``steps`` here
    if k < 1 or not 0 < failure_probability < 1:
        return math.inf
    root = math.log(KW_CONSTANT * math.sqrt(n) / failure_probability) / (2 * k - 1)
    eps = max(root, 0.0) ** 2
    return eps if eps < 1 else math.inf


@dataclass(frozen=True)
class LanczosNorm:
    """A probabilistic upper bound on one operator norm.

    ``value = sqrt(ritz / (1 - epsilon)) (1 + ROUNDING_MARGIN)`` holds except with probability at most
    ``failure_probability`` (over the start vector); ``ritz`` is the largest Ritz value of ``S^T S``
    after ``steps`` Lanczos steps (``sqrt(ritz)`` is an estimate from below)."""

    value: float
    estimate: float
    epsilon: float
    steps: int
    failure_probability: float


@torch.no_grad()
def lanczos_inner_norms(structure: Structure, keys, *, steps: int = 256, failure_probability: float = 1e-9,
                        seed: int | None = None, progress: bool | None = None, device=None) -> dict:
    """Probabilistic upper bounds ``{(t, j): LanczosNorm}`` on ``||S_{t,j}||`` for the given keys.

    All operators run their Lanczos steps together: one step is one batched forward and one batched
    adjoint sweep (:mod:`lipzoo.bounds.sweep`), ``2 L`` layer calls for all ``O(L^2)`` operators; each
    runs on the Gram matrix of its smaller side. The structure should be in float64.

    Args:
        structure: the network's structure.
        keys: the inner operators ``(t, j)``.
        steps: Lanczos steps per operator (more steps, smaller ``epsilon``); an operator whose Krylov
            space becomes invariant stops early, its top Ritz value is then exact.
        failure_probability: total probability, over the start vectors, that any returned bound is
            below its norm (split evenly over the keys).
        seed: seed of the start vectors; ``None`` draws it from ``os.urandom`` (recorded by callers).
        progress: tqdm progress bar (``None``: only on a terminal).
    """
    from tqdm.auto import tqdm

    keys = list(keys)
    if not keys:
        return {}
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}.")
    if not 0 < failure_probability < 1:
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability!r}.")
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    gen = torch.Generator().manual_seed(seed)
    per_key = failure_probability / len(keys)
    # Lanczos on the Gram matrix of the smaller side: S^T S (vectors in the input space, a forward then an
    # adjoint application per step) or S S^T (output space, adjoint then forward): same top eigenvalue,
    # smaller n, and less memory traffic to re-orthogonalise against
    shapes = {k: structure.space_shape(*k) for k in keys}
    outward = {k: numel(shapes[k][1]) < numel(shapes[k][0]) for k in keys}
    dims = {k: numel(shapes[k][int(outward[k])]) for k in keys}
    for k in keys:
        if lanczos_epsilon(dims[k], steps, per_key) == math.inf:
            raise ValueError(f"{steps} Lanczos steps cannot reach failure probability {per_key:.3g} for "
                             f"operator S{k} ({dims[k]} dimensions); use more steps.")
    runs = {}
    for k in keys:
        b = torch.randn(1, *shapes[k][int(outward[k])], generator=gen, dtype=torch.float64).to(device)
        runs[k] = _Lanczos(b / b.norm(), steps)
    bar = tqdm(total=steps, desc="Lanczos", disable=(None if progress is None else not progress), leave=False,
               unit="step")
    # One forward and one adjoint sweep per step, all operators together. An S S^T run's adjoint half of
    # step i+1 shares the adjoint sweep of step i (pipelined), so it costs no extra sweep.
    half = adjoint_sweep(structure, {k: r.q for k, r in runs.items() if outward[k]})  # S^T u_0
    for _ in range(steps):
        active = [k for k, r in runs.items() if not r.done]
        if not active:
            break
        fwd = forward_sweep(structure, {k: (half[k] if outward[k] else runs[k].q) for k in active})
        for k in active:
            if outward[k]:
                runs[k].step(fwd[k])  # S S^T u_i
        back = adjoint_sweep(structure, {k: (runs[k].q if outward[k] else fwd[k]) for k in active
                                         if not runs[k].done})
        for k in active:
            if not outward[k]:
                runs[k].step(back[k])  # S^T S v_i
            elif not runs[k].done:
                half[k] = back[k]
        bar.update(1)
    bar.close()
    out = {}
    for k in keys:
        ritz, n_steps = runs[k].top()
        # stopped early: the Krylov space is invariant, so it equals the one of `steps` steps and the
        # theorem applies with k = steps
        eps = lanczos_epsilon(dims[k], steps, per_key)
        value = math.sqrt(ritz / (1 - eps)) * (1 + ROUNDING_MARGIN)
        out[k] = LanczosNorm(math.nextafter(value, math.inf), math.sqrt(ritz), eps, n_steps, per_key)
    return out


class _Lanczos:
    """One operator's Lanczos run in float64, fully re-orthogonalised at every step."""

    def __init__(self, q: torch.Tensor, steps: int):
        self.q, self.steps, self.i, self.done = q, steps, 0, False
        self.basis = torch.empty(steps, q.numel(), dtype=q.dtype, device=q.device)
        self.alpha: list[float] = []
        self.beta: list[float] = []

    def step(self, w: torch.Tensor) -> None:
        """Take ``w = A q`` for the current vector ``q``; prepare the next one (or finish)."""
        v = self.q.reshape(-1)
        self.basis[self.i] = v
        x = w.reshape(-1)
        a = float(v @ x)
        self.alpha.append(a)
        x = x - a * v  # the three-term recurrence, then full re-orthogonalisation against every vector,
        if self.i:  # repeated when it cancelled much ("twice is enough", Kahan's 0.7 test)
            x = x - self.beta[-1] * self.basis[self.i - 1]
        done = self.basis[:self.i + 1]
        b = float(x.norm())
        for _ in range(2):
            x = x - done.T @ (done @ x)
            b, before = float(x.norm()), b
            if b > 0.7 * before:
                break
        self.i += 1
        scale = max(abs(t) for t in self.alpha + self.beta)
        if self.i == self.steps or b <= 1e-13 * scale:
            self.done = True  # finished, or the Krylov space is invariant: its top Ritz value is exact
            return
        self.beta.append(b)
        self.q = (x / b).reshape(self.q.shape)

    def top(self) -> tuple[float, int]:
        """The largest Ritz value (clamped at 0) and the number of steps taken."""
        return max(ritz_top(self.alpha, self.beta), 0.0), len(self.alpha)


# ----------------------------------------------------------------------------- estimates from below (planning)

def key_generator(seed: int, key: tuple[int, int]) -> torch.Generator:
    """A generator of its own for chain ``key``: what it draws does not depend on what ran before it."""
    t, j = key
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + (t + 2) * 10_007 + (j + 2)) % (1 << 63))


ESTIMATE_DTYPE = torch.float32
"""Precision of the Lanczos sweeps that rank and stop the refinement (:func:`lanczos_estimates`): float32
convolutions run 2.5-6x faster than float64 ones on 2 CPU cores, and no estimate enters a bound."""

ESTIMATE_MARGIN = 1e-4
"""Relative margin taken off a reduced-precision estimate so that it stays below the float64 norm: the
float32 operator and the Ritz value's rounding are off by ~1e-6 relative, and the refinement's stop rule
(``tol`` = 2e-3) does not feel 1e-4."""


def lanczos_estimates(structure: Structure, keys, steps: int, seed: int, device=None, rtol: float = 1e-6,
                      dtype: torch.dtype = ESTIMATE_DTYPE) -> dict:
    """Estimates (from below) of every ``||S_k||`` by batched Lanczos on ``S_k^T S_k``: one forward and one
    adjoint sweep per step advance all chains together (like a power iteration, which converges much
    more slowly: after 15 power steps the 4C3F estimates were 1-3% low, enough to send the refinement
    after norms that were already certified to 1e-9).

    Three-term recurrence without reorthogonalization (two vectors per chain): lost orthogonality only
    duplicates converged Ritz values (Paige), and in exact arithmetic every Ritz value is at most
    ``lambda_max``. Used for ranking and stopping only, never as a bound. A chain stops once its top Ritz
    value moves by less than ``rtol`` (relative). The sweeps run in ``dtype`` (a copy of the structure;
    8C2F's 36 estimates took 28 s in float64); below float64 the result is lowered by :data:`ESTIMATE_MARGIN`.
    Each chain's start vector comes from its own generator (:func:`key_generator`), so its estimate does not
    depend on which other chains are estimated with it."""
    if dtype != torch.float64:
        structure = structure.to(dtype)
    q: dict[tuple[int, int], torch.Tensor]
    q_prev: dict[tuple[int, int], torch.Tensor]
    alpha: dict[tuple[int, int], list[float]]
    beta: dict[tuple[int, int], list[float]]
    top: dict[tuple[int, int], float]
    q, q_prev, alpha, beta, top = {}, {}, {}, {}, {}
    for k in keys:
        x = torch.randn(1, *structure.space_shape(*k)[0], generator=key_generator(seed, k),
                        dtype=torch.float64).to(device)
        q[k] = (x / x.norm()).to(dtype)
        alpha[k], beta[k], top[k] = [], [], 0.0
    active = list(keys)
    for _ in range(steps):
        if not active:
            break
        w = adjoint_sweep(structure, forward_sweep(structure, {k: q[k] for k in active}))
        for k in list(active):
            wk = w[k]
            a = float((q[k].double() * wk.double()).sum())
            alpha[k].append(a)
            wk = wk - a * q[k]
            if k in q_prev:
                wk = wk - beta[k][-1] * q_prev[k]
            b = float(wk.double().norm())
            if not (math.isfinite(a) and math.isfinite(b)):  # overflow in a reduced precision: no estimate
                top[k] = math.inf
                active.remove(k)
                continue
            ritz = ritz_top(alpha[k], beta[k])
            converged = abs(ritz - top[k]) <= rtol * abs(ritz)
            top[k] = max(top[k], ritz)
            if converged or b <= 1e-13 * max(abs(top[k]), 1e-300):
                active.remove(k)
                continue
            beta[k].append(b)
            q_prev[k], q[k] = q[k], wk / b
    shrink = 1.0 if dtype == torch.float64 else 1.0 - ESTIMATE_MARGIN
    # a non-finite Ritz value (float32 overflow on a huge operator) estimates nothing: 0 over-states the gains
    return {k: math.sqrt(top[k]) * shrink if math.isfinite(top[k]) and top[k] > 0 else 0.0 for k in keys}
