"""Guaranteed norms of all LipLT inner operators: cheap proved bounds, then certified refinement, planned by work.

Every number returned here is a mathematically guaranteed upper bound on ``||S_{t,j}||``, floating-point
rounding included, and the result is a function of the structure, the options and the code only: every
decision is taken from the cost model of :mod:`lipzoo.bounds.cost` (work counted from shapes) and from seeded
estimates, never from a clock or the memory free at the time.

1. **Cheap proved bounds** (:mod:`lipzoo.bounds.planner`): the best split of each chain into segments bounded
   by certified norms or by their factors' own proved bounds.
2. **Exact where a side is small**: every chain with a side of at most ``small`` dimensions (``small_input``
   for chains from the network's input) is certified; chains sharing that side share one sweep of its identity
   basis (:func:`lipzoo.bounds.gram.group_gram`).
3. **Certified refinement where it pays.** Batched Lanczos (:func:`lipzoo.bounds.lanczos.lanczos_estimates`)
   gives estimates ``sigma_k <= ||S_k||``; with the sensitivity ``dF/db_k`` of the final bound,
   ``dF/db_k (b_k - sigma_k)`` bounds what an exact norm of ``S_k`` could gain (the recursion is a polynomial with
   non-negative coefficients, so these first-order gains over-state the true ones); a certified chain also
   tightens the longer chains that pass through it (:meth:`~lipzoo.bounds.planner.ChainPlanner.record`), and
   that counts in its gain. Chains are certified exactly (:func:`lipzoo.bounds.gram.certified_chain_norm`) in
   order of gain per work unit (:func:`lipzoo.bounds.gram.chain_work`), each one only if its work fits in what
   is left of ``effort``; refinement stops when all possible direct gains together, or the distance from the
   bound to the objective at the estimates (which no certificate can go below), are below ``tol``.

Certificates made before for the same operators (``known``: the certificate cache, or a checkpoint's shipped
certificate) are claims, checked against this run's own estimates from below; those that pass are used where
this run would have computed them, and their work is counted as if it had been spent, so a run with them
returns what a run without them returns.

Assumption: float64 arithmetic in the standard model (:mod:`lipzoo.numerics`), which holds for PyTorch's CPU
kernels (im2col + GEMM, LAPACK Cholesky) and for CUDA with cuDNN switched off (done here); fast
(Strassen/Winograd/FFT) products would need other constants.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lipzoo.bounds.cost import (DEFAULT_EFFORT, LOCAL_MAX_BYTES, MAX_BYTES, MAX_SIDE, resolve_effort)
from lipzoo.bounds.gram import certified_chain_norm, chain_work, group_gram
from lipzoo.bounds.lanczos import key_generator, lanczos_estimates
from lipzoo.bounds.planner import ChainPlanner
from lipzoo.bounds.steps import FactorBounds
from lipzoo.bounds.structure import Structure

logger = logging.getLogger(__name__)

__all__ = ["ProvedNorm", "proved_inner_norms"]


@dataclass
class ProvedNorm:
    """A guaranteed bound of one inner operator, with how it was obtained."""

    value: float
    guarantee: str  # "exact" (certified Gram eigenvalue) or "proved" (product of proved segment bounds)
    how: str
    estimate: float = 0.0


def _out_of_memory_is_none(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or ``None`` if the GPU runs out of memory (the certificate is skipped and the bound
    stays proved; what was allocated is released before the next one). The one event outside the plan: it
    depends on the device's memory, and it is logged."""
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        logger.warning("out of GPU memory: a certificate was skipped (the bound stays proved, but may differ from "
                       "a run on a device with more memory)")
        torch.cuda.empty_cache()
        return None


def proved_inner_norms(structure: Structure, keys, *, objective: Callable[[dict], torch.Tensor],
                       small: int = 1024, small_input: int | None = 4096, effort=DEFAULT_EFFORT,
                       tol: float = 2e-3, chunk: int = 256, n_estimate: int = 40, seed: int = 0,
                       progress: bool | None = None, device=None, max_side: int = MAX_SIDE,
                       max_bytes: float = MAX_BYTES, local_max_bytes: float = LOCAL_MAX_BYTES,
                       known: dict | None = None,
                       on_certified: Callable[[tuple, float, float], None] | None = None,
                       on_corrupt: Callable[[list], None] | None = None, stats: dict | None = None) -> dict:
    """Guaranteed upper bounds ``{(t, j): ProvedNorm}`` on ``||S_{t,j}||`` for the given keys.

    Args:
        structure: the network's structure (float64 operators).
        keys: the inner operators ``(t, j)``.
        objective: maps ``{key: tensor norm}`` to the scalar final bound (for sensitivities).
        small: chains with a side of at most this many dimensions are always certified exactly.
        small_input: the same for chains from the network's input (``S_{t,-1}``, one shared sweep): these
            are the longest products, and their split bounds the loosest (2-17x on a random 6C2F).
        effort: work units (:mod:`lipzoo.bounds.cost`) the refinement may spend certifying larger chains
            exactly, most useful first, or a name of :data:`~lipzoo.bounds.cost.EFFORT_LEVELS`.
        tol: stop refining once the bound is within ``tol`` (relative) of the objective at the estimates
            from below of every norm, or the first-order gains of all remaining chains together are (both
            over-state what certificates could still gain).
        chunk: identity-basis block size for Gram matrices.
        n_estimate: batched Lanczos steps (at most) for the estimates that rank and stop the certification.
        seed: seed of every random start vector (each chain and group draws from its own generator).
        progress: show a tqdm bar (``None``: only on a terminal).
        max_side: largest smaller side certified on the dense path (a local chain,
            :mod:`lipzoo.bounds.banded`, is capped by the memory of its blocks instead).
        max_bytes: memory for the matrices of one certified group.
        local_max_bytes: memory for the blocks of one local chain.
        known: ``{key: (norm, estimate)}`` certified before for these very operators (same weights, same
            accountant). A claim, checked first: one below this run's own Lanczos estimate of that norm (from
            below) is corrupt, dropped (``on_corrupt(keys)``) and certified again; the others are used where this
            run would compute them (module docstring).
        on_certified: called as ``on_certified(key, norm, estimate)`` right after each new certificate, so a
            caller can keep it (an interrupted run loses none of them).
        on_corrupt: called with the keys of ``known`` entries found below their estimates.
        stats: filled with ``effort`` and ``work`` (units spent by the refinement, certificates reused included),
            ``stopped`` (why the refinement stopped: ``"tolerance"``, ``"effort"`` or ``"done"``), ``certified`` and
            ``reused`` (numbers of chains).
    """
    keys = list(keys)
    effort = resolve_effort(effort)
    if not keys:
        if stats is not None:
            stats.update(effort=effort, work=0.0, stopped="done", certified=0, reused=0)
        return {}
    # cuDNN may pick FFT/Winograd convolutions, outside the rounding model: use the direct kernels
    with torch.backends.cudnn.flags(enabled=False):
        return _Run(structure, keys, objective, small=small, small_input=small_input, effort=effort, tol=tol,
                    chunk=chunk, n_estimate=n_estimate, seed=seed, progress=progress, device=device,
                    max_side=max_side, max_bytes=max_bytes, local_max_bytes=local_max_bytes, known=known or {},
                    on_certified=on_certified, on_corrupt=on_corrupt).run(stats)


class _Run:
    """One computation of :func:`proved_inner_norms` (its state: certified chains, estimates, current bounds)."""

    def __init__(self, structure, keys, objective, *, small, small_input, effort, tol, chunk, n_estimate, seed,
                 progress, device, max_side, max_bytes, local_max_bytes, known, on_certified, on_corrupt):
        from tqdm.auto import tqdm

        self.s, self.keys, self.objective = structure, keys, objective
        self.small, self.small_input, self.effort, self.tol = small, small_input, effort, tol
        self.chunk, self.n_estimate, self.seed, self.device = chunk, n_estimate, seed, device
        self.max_side, self.max_bytes, self.local_max_bytes = max_side, max_bytes, local_max_bytes
        self.on_certified, self.on_corrupt = on_certified, on_corrupt
        self.bounds = FactorBounds()
        self.plan = ChainPlanner(structure, self.bounds)
        self.chains = {k: self.plan.chain(*k) for k in keys}
        self.known: dict[tuple[int, int], tuple[float, float]] = {k: v for k, v in known.items() if k in self.chains}
        self.est: dict = {k: 0.0 for k in keys}
        self.done: set = set()
        self.result: dict = {}
        self.reused = 0
        self.bar = tqdm(total=len(keys), desc="guaranteed norms", disable=(None if progress is None else not progress),
                        leave=False, unit="op")

    # -- bookkeeping

    def certified(self, key, value: float, estimate: float, new: bool = True) -> None:
        self.plan.record(key, value)
        self.done.add(key)
        self.est[key] = estimate
        self.bar.update(1)
        if new and self.on_certified is not None:
            self.on_certified(key, value, estimate)

    def update(self) -> None:
        for k in self.keys:
            val, how = self.plan.best_split(*self.chains[k])
            if k not in self.result or val < self.result[k].value:
                self.result[k] = ProvedNorm(val, "exact" if k in self.done else "proved", how, self.est[k])
            elif k in self.done and self.result[k].guarantee != "exact":
                # certified, and the split bound kept is no larger than the certificate: exact-grade too
                self.result[k] = ProvedNorm(self.result[k].value, "exact", self.result[k].how, self.est[k])

    def floor(self) -> float:
        """The objective at the estimates (from below) of every norm: no certificate can bring the bound under
        it, since each exact norm is at least its estimate and the recursion is monotone."""
        with torch.no_grad():
            return float(self.objective({k: torch.tensor(min(self.est[k], self.result[k].value),
                                                         dtype=torch.float64) for k in self.keys}))

    def gains(self) -> tuple[float, dict, dict]:
        """The final bound and, per chain not yet certified, upper bounds on what certifying it could gain:
        directly, and in total (with the other chains that contain it as a segment).

        The recursion is a polynomial with non-negative coefficients in the norms, so its partial derivatives
        are non-decreasing and ``F(b) - F(b') <= sum_k dF/db_k(b) (b_k - b'_k)`` for ``b' <= b``; certifying
        ``S_k`` gives ``b'_k >= est_k``, and every other chain at best its split bound with ``est_k`` in place of
        ``||S_k||``. The direct gains together bound what all certificates could still gain (the stop rule);
        the total ones rank the chains: a short chain inside many long ones is worth more than its own gain."""
        keys, result, est = self.keys, self.result, self.est
        with torch.enable_grad():  # the caller usually runs under no_grad
            inner = {k: torch.tensor(result[k].value, dtype=torch.float64, requires_grad=True) for k in keys}
            f = self.objective(inner)
            grads = torch.autograd.grad(f, [inner[k] for k in keys], allow_unused=True)
        grad = {k: (float(g) if g is not None else 0.0) for k, g in zip(keys, grads)}
        direct = {k: grad[k] * max(result[k].value - est[k], 0.0) for k in keys if k not in self.done}
        others = [k for k in keys if k not in self.done and grad[k] > 0]
        total = {}
        proved_only = self.plan.exact
        try:
            for k in direct:
                self.plan.exact = dict(proved_only)
                self.plan.record(k, est[k])  # a what-if: an estimate, never left among the proved norms
                total[k] = direct[k] + sum(
                    grad[k2] * max(result[k2].value - self.plan.best_split(*self.chains[k2])[0], 0.0)
                    for k2 in others if k2 != k)
        finally:
            self.plan.exact = proved_only
        return float(f), direct, total

    # -- the three phases

    def check_known(self, keys, estimates: dict | None = None) -> None:
        """Drop the stored certificates of ``keys`` that lie below this run's own estimate of the norm (from below):
        corrupt claims. ``estimates``: ones this run computed anyway (the refinement's), else Lanczos runs of their
        own (the chains of the shared sweeps, checked before any sweep is skipped)."""
        keys = [k for k in keys if k in self.known]
        if not keys:
            return
        if estimates is None:
            estimates = lanczos_estimates(self.s, keys, self.n_estimate, self.seed + 7919, self.device)
        corrupt = sorted(k for k in keys if not self.known[k][0] >= estimates[k])
        if corrupt:
            logger.warning("Ignoring %d stored certificate(s) below this run's estimate of the norm (corrupt entries "
                           "%s); certifying them again.", len(corrupt), ", ".join(f"S{k}" for k in corrupt))
            for k in corrupt:
                del self.known[k]
            if self.on_corrupt is not None:
                self.on_corrupt(corrupt)

    def small_sides(self, groups: list) -> None:
        """Every chain with a small side, one sweep per shared side (at most ``max_bytes`` of stored matrices per
        sweep: a wide group is split). The ``groups`` are laid out from all keys, so they are the same whatever is
        known; a group whose chains are all known is not swept again."""
        for group in groups:
            name, ks, _, n, _ = group
            batch: list = []
            for k in sorted(ks) + [None]:
                if batch and (k is None or (len(batch) + 1) * n * n * 8 > self.max_bytes):
                    self.certify_group(next(g for g in self.plan.groups(batch, self.small, self.small_input)
                                            if g[0] == name))
                    batch = []
                if k is not None:
                    batch.append(k)

    def certify_group(self, group) -> None:
        name, ks, steps, n, shape = group
        if all(k in self.known for k in ks):
            for k in ks:
                self.certified(k, *self.known[k], new=False)
            self.reused += len(ks)
            return
        self.bar.set_postfix_str(f"exact ({name}, side {n})")
        t0 = time.perf_counter()
        gen = key_generator(self.seed, min(ks))
        vals = _out_of_memory_is_none(
            group_gram, steps, n, shape, chunk=self.chunk, device=self.device, generator=gen,
            max_bytes=self.max_bytes, estimates=self.est,
            report=lambda i, nb: self.bar.set_postfix_str(f"exact ({name}, side {n}): block {i}/{nb}"))
        logger.debug("exact group %s (%d operators, side %d): %s in %.2fs", name, len(ks), n,
                     "certified" if vals is not None else "out of memory, skipped", time.perf_counter() - t0)
        for key, val in (vals or {}).items():
            self.certified(key, val, self.est[key])

    def refine(self) -> tuple[float, str]:
        """Certify the chains whose looseness costs most per work unit, within ``effort``; returns the work and why
        it stopped: ``"tolerance"`` (no certificate could gain ``tol`` any more), ``"effort"`` (a chain that could
        still gain did not fit in what was left) or ``"done"`` (nothing left worth certifying)."""
        tried: set = set()
        work: dict = {}
        spent = 0.0
        while True:
            f, gain, total = self.gains()
            if min(sum(gain.values()), f - self.floor()) <= self.tol * f:
                return spent, "tolerance"  # even exact norms everywhere could not lower the bound by more than tol
            for k in gain:
                if k not in work:
                    _, ops, ins, _ = self.chains[k]
                    work[k] = chain_work(ops, ins[-1], self.bounds, max_side=self.max_side,
                                         local_max_bytes=self.local_max_bytes)
            left = self.effort - spent
            useful = [k for k in gain if total[k] > 1e-4 * f and k not in tried]
            todo = sorted((k for k in useful if work[k] <= left), key=lambda k: -total[k] / max(work[k], 1e-9))
            if not todo:
                return spent, "effort" if useful else "done"
            k = todo[0]
            tried.add(k)
            spent += work[k]
            if k in self.known:
                value = self.known[k][0]
                self.reused += 1
                logger.debug("exact S%s: reused (%.3g units)", k, work[k])
            else:
                _, ops, ins, _ = self.chains[k]
                self.bar.set_postfix_str(f"exact S{k}")
                t0 = time.perf_counter()
                value = _out_of_memory_is_none(
                    certified_chain_norm, ops, ins[-1], chunk=self.chunk, generator=key_generator(self.seed, k),
                    device=self.device, max_side=self.max_side, local_max_bytes=self.local_max_bytes,
                    bounds=self.bounds)
                logger.debug("exact S%s: %s in %.2fs (%.3g units)", k, "certified" if value is not None else
                             "skipped (out of memory)", time.perf_counter() - t0, work[k])
            if value is not None:
                self.certified(k, value, self.est[k], new=k not in self.known)
                self.update()

    def run(self, stats: dict | None) -> dict:
        t_all = time.perf_counter()
        groups = self.plan.groups(self.keys, self.small, self.small_input)
        self.check_known([k for g in groups for k in g[1]])
        self.update()
        self.small_sides(groups)
        logger.debug("small sides certified: %.2fs", time.perf_counter() - t_all)
        rest = [k for k in self.keys if k not in self.done]
        if rest:
            t0 = time.perf_counter()
            self.bar.set_postfix_str("Lanczos estimates")
            self.est.update(lanczos_estimates(self.s, rest, self.n_estimate, self.seed, self.device))
            logger.debug("Lanczos estimates of %d norms (%d steps at most): %.2fs", len(rest), self.n_estimate,
                         time.perf_counter() - t0)
            self.check_known(rest, self.est)  # the refinement's estimates check the stored ones it may use
        self.result.clear()  # the estimates changed: rebuild every entry
        self.update()
        spent, stopped = self.refine() if rest else (0.0, "done")
        self.bar.close()
        logger.debug("refinement: %.4g of %.4g units; total %.2fs; bound %.6g, at the estimates %.6g", spent,
                     self.effort, time.perf_counter() - t_all, float(self.objective(
                         {k: torch.tensor(self.result[k].value, dtype=torch.float64) for k in self.keys})),
                     self.floor())
        if stats is not None:
            stats.update(effort=self.effort, work=spent, stopped=stopped, certified=len(self.done), reused=self.reused)
        return self.result
