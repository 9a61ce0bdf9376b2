"""The cost model of the guaranteed bound: work counted from shapes, never measured with a clock.

Every planning decision of :func:`lipzoo.bounds.proved.proved_inner_norms` (which chains to certify exactly,
in which order, at which level of a shared sweep their Gram matrices are formed, whether a certificate fits
the effort left) is taken from the numbers here, which depend only on the operators' shapes. So the bound is a
function of the weights, the structure, the options and the code: the machine's speed and load change how long
it takes, never what it returns.

**Work units.** One unit is ``1e9`` GEMM-equivalent float64 flops. Operation counts are weighted by how fast a
CPU runs each kind relative to a large GEMM (measured once on the project's 2-core machine, one thread; the
weights are constants of the model, not measurements of the running machine):

* :data:`W_APPLY`: convolutions and other operator applications (im2col + small GEMMs, 9-28 GFLOP/s against
  47 for a large GEMM);
* :data:`W_CHOLESKY`: Cholesky factorizations (16 GFLOP/s at n = 2048);
* :data:`W_GEMM`: large matrix products (1 by definition).

On that machine one unit takes about 0.02-0.03 s of one core; other machines (and GPUs) run the same plan at
their own speed. :data:`EFFORT_LEVELS` names the usual efforts.
"""

from __future__ import annotations

import math

from lipzoo.bounds.steps import Step

__all__ = ["W_APPLY", "W_CHOLESKY", "W_GEMM", "GIGA", "EFFORT_LEVELS", "DEFAULT_EFFORT", "resolve_effort",
           "apply_work", "gemm_work", "cholesky_work", "MAX_SIDE", "MAX_BYTES", "LOCAL_MAX_BYTES"]

GIGA = 1e9
W_GEMM = 1.0
W_APPLY = 3.0
W_CHOLESKY = 3.0

EFFORT_LEVELS = {"none": 0.0, "low": 2000.0, "medium": 20000.0, "high": 200000.0}
"""Named efforts (work units the refinement may spend on top of the small chains, which are always certified):
``none`` stops at the split bounds; ``medium``, the default, is about the work of the 300 s default of the seconds
budget it replaced (on one core of this project's machine); ``high`` is for networks whose large chains need more
(8C2F). What they give on the zoo models, and in how long: docs/benchmarks.md, "Issue 23"."""

DEFAULT_EFFORT = "medium"

MAX_SIDE = 16384
"""Largest smaller side certified on the dense path (its Gram matrix is 2 GiB in float64 and the factorization
makes a copy)."""

MAX_BYTES = 4 * 2.0 ** 30
"""Memory for the stored matrices of one group of chains that share a small side (:mod:`lipzoo.bounds.gram`)."""

LOCAL_MAX_BYTES = 4 * 2.0 ** 30
"""Memory for the blocks of a local chain's Gram matrix (:mod:`lipzoo.bounds.banded`); blocks that do not fit
are factored in parts, one sweep of the probes each. Fixed, so that the plan (and the rounding of the result)
does not depend on the memory free at the time."""


def resolve_effort(effort) -> float:
    """Work units of ``effort``: a name of :data:`EFFORT_LEVELS` or a non-negative number."""
    if isinstance(effort, str):
        if effort not in EFFORT_LEVELS:
            raise ValueError(f"effort must be one of {tuple(EFFORT_LEVELS)} or a number of work units >= 0, "
                             f"got {effort!r}.")
        return EFFORT_LEVELS[effort]
    if isinstance(effort, bool) or not isinstance(effort, (int, float)) or not effort >= 0 or math.isinf(effort):
        raise ValueError(f"effort must be one of {tuple(EFFORT_LEVELS)} or a finite number of work units >= 0, "
                         f"got {effort!r}.")
    return float(effort)


def apply_work(steps: list[Step], vectors: float) -> float:
    """Work units of applying ``steps`` to ``vectors`` vectors."""
    return W_APPLY * vectors * sum(st.flops() for st in steps) / GIGA


def gemm_work(m: float, n: float, k: float) -> float:
    """Work units of an ``(m x k) (k x n)`` matrix product."""
    return W_GEMM * 2.0 * m * n * k / GIGA


def cholesky_work(flops: float) -> float:
    """Work units of a Cholesky factorization of ``flops`` flops (``n^3 / 3`` for a dense one)."""
    return W_CHOLESKY * flops / GIGA
