"""The LipLT accountant: Theorem 3 / eq. (16) and the naive bound, globally, per class or per pair.

For ``y_k = W_k x_k``, ``x_{k+1} = H_k x_k + G_k phi_k(y_k)`` and ``z = W_L x_L`` (see
:mod:`lipzoo.bounds.structure`), with ``Hhat_k = H_k + (alpha_k+beta_k)/2 G_k W_k`` and
``d_k = (beta_k - alpha_k)/2``::

    m_0     = ||W_0||
    m_{t}   = ||W_t Hhat_{t-1} ... Hhat_0|| + sum_{j<t} d_j ||W_t Hhat_{t-1} ... Hhat_{j+1} G_j|| m_j

``m_t`` bounds the Lipschitz constant of ``x_0 -> y_t`` and ``m_L`` that of the network. For the
output (``t = L``) the operators have as many rows as there are classes, so their rows
``S^T e_i`` are computed exactly with one batched adjoint sweep; the pairwise bound of
``z_i - z_j`` then uses the row differences ``S^T (e_i - e_j)`` directly (not ``L_i + L_j``), for
any number of classes.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from torch import nn

from lipzoo.bounds.certificate import MODES, PROVED, LipschitzBound, _thaw, _vouch, check_bound_for
from lipzoo.bounds.eclipse import GUARANTEE as ECLIPSE_GUARANTEE
from lipzoo.bounds.eclipse import eclipse_bound
from lipzoo.bounds.fingerprint import structure_fingerprint
from lipzoo.bounds.lanczos import lanczos_inner_norms
from lipzoo.bounds.layerwise import layerwise, naive_layer, sdp_layer
from lipzoo.bounds.norms import (EXACT_MARGIN, chain_norm, output_norms, reference_tensor, round_cast,
                                 weakest_guarantee, with_margin)
from lipzoo.bounds.proved import proved_inner_norms
from lipzoo.bounds.structure import Structure, build_structure, numel
from lipzoo.bounds.sweep import adjoint_sweep, forward_sweep, power_iteration, row_norms
from lipzoo.layers.torch_modules import operator_values

logger = logging.getLogger(__name__)

__all__ = ["LipschitzBound", "check_bound_for", "lipschitz_bound", "lipschitz_bounds", "output_norms", "liplt_recursion"]

METHODS = ("liplt", "naive", "lt_sdp", "eclipse", "best")
SDP_T = ("sn", "aol", "sll", "best")
NORMS = ("auto", "exact", "power", "lanczos")
# Seconds ``norm="auto"`` may spend certifying large operators exactly. The refinement stops on its own
# once exact norms everywhere could not lower the bound by more than 0.2%, so this caps only networks
# whose split bounds stay loose: 300 s brings the random-init 4C3F / 6C2F and the shipped CIFAR-10 6C2F
# within 1% of their converged estimates on a 2-core CPU (30 s left them at 1.06 / 1.07 / 1.013;
# docs/benchmarks.md).
DEFAULT_BUDGET = 300.0


def output_rows(structure: Structure, sources) -> dict:
    """Rows ``S_{L,j}^T e_i`` for every source ``j`` in one batched adjoint sweep: ``{j: (K, n_j)}``."""
    L = structure.depth
    k = numel(structure.output_shape)
    ref = reference_tensor(structure)
    eye = torch.eye(k, dtype=ref.dtype, device=ref.device).reshape(k, *structure.output_shape)
    rows = adjoint_sweep(structure, {(L, j): eye for j in sources})
    return {j: rows[(L, j)].reshape(k, -1) for j in sources}


def liplt_recursion(structure: Structure, inner: dict, final: dict) -> tuple[torch.Tensor, list]:
    """Eq. (16): ``inner[(t, j)]`` are norms for targets ``t < L``; ``final[j]`` the output norms."""
    m: list[torch.Tensor] = []
    for t in range(structure.depth):
        mt = inner[(t, -1)]
        for j in range(t):
            mt = mt + structure.blocks[j].d * inner[(t, j)] * m[j]
        m.append(mt)
    out = final[-1]
    for j in range(structure.depth):
        out = out + structure.blocks[j].d * final[j] * m[j]
    return out, m


def _power_norms(structure: Structure, keys, n_iter: int, generator=None) -> dict:
    ref = reference_tensor(structure)
    v = {}
    for (t, j) in keys:
        src, _ = structure.space_shape(t, j)
        x = torch.randn(1, *src, generator=generator, dtype=ref.dtype).to(ref.device)
        v[(t, j)] = x / x.norm()
    v = power_iteration(structure, v, n_iter)
    out = forward_sweep(structure, v, finish=row_norms)
    return {k: out[k][0] for k in keys}


LANCZOS_STEPS = 320
"""Default Lanczos steps of ``norm="lanczos"``: with ``failure_probability=1e-9`` over ~30 operators of up
to ~3e4 dimensions, each inner norm is inflated by at most ~0.1 % over its Ritz value (see
:func:`lipzoo.bounds.lanczos.lanczos_epsilon`), and the pairwise bound of 4C3F lands within 1 % of the
converged estimate."""

SMALL_DENSE = 4096
"""Under ``norm="auto"`` without ``max_dense``: operators with a side this small are always certified exactly
(the previous fixed ``max_dense``, so the bound is never looser than before; shared sweeps and Cholesky
certificates make it cheaper). With 1024 the refinement could not afford the 4096-wide CIFAR operators on
a loaded 2-core machine and the shipped CIFAR-10 bound came out 14% above the estimate instead of 2%."""
SMALL_INPUT = 4096
"""... and operators from the network's input when the input has at most this many dimensions."""


def lipschitz_bound(model: nn.Module, input_shape, *, method: str = "liplt", mode: str = "pairwise",
                    norm: str = "auto", max_dense: int | None = None, n_iter: int | None = None,
                    dtype: torch.dtype = torch.float64, device=None, seed: int | None = 0,
                    sdp_t: str = "best", budget: float = DEFAULT_BUDGET, progress: bool | None = None,
                    cache: bool | None = None, failure_probability: float = 1e-9) -> LipschitzBound:
    """Upper bound on the Lipschitz constant of a model's logits (or logit differences).

    Args:
        model: a ``nn.Sequential`` (possibly nested) of lipzoo layers and supported torch modules.
        input_shape: per-sample input shape, e.g. ``(3, 32, 32)``.
        method: ``"liplt"`` (Theorem 3), ``"naive"`` (product of per-layer eq. (11) constants),
            ``"lt_sdp"`` (product of per-layer Theorem 2 constants, the l2 refinement for
            residual layers; ``sdp_t`` picks ``T``: ``"sn"``, ``"aol"``, ``"sll"`` or ``"best"``),
            ``"eclipse"`` (the certified ECLipsE-style bound of :mod:`lipzoo.bounds.eclipse`, for
            networks without skip branches whose layers have sides <= 4096; exact, ``norm`` unused) or
            ``"best"`` (the entrywise minimum of ``"liplt"`` and, where it applies, ``"eclipse"``:
            both are upper bounds, so is their minimum).
        mode: ``"global"``, ``"per_class"`` or ``"pairwise"``.
        norm: how operator norms are obtained: ``"auto"`` (exact when the smaller side has at most
            ``max_dense`` dimensions, proved upper bounds otherwise: ``guaranteed=True``),
            ``"exact"`` (materialize every operator; slow for large convolutions), ``"lanczos"``
            (``n_iter`` batched Lanczos steps from random starts: an upper bound except with
            probability ``failure_probability``, ``guarantee="probabilistic"``; seconds, and within
            a fraction of a percent of the converged norms, see :mod:`lipzoo.bounds.lanczos`) or
            ``"power"`` (``n_iter`` power iterations: an estimate, ``guaranteed=False``).
        max_dense: under ``norm="auto"``, operators with a side of at most this many dimensions are
            always certified exactly (default :data:`SMALL_DENSE`); larger ones get proved split
            bounds, then the ones whose looseness costs most are certified exactly within ``budget``.
        n_iter: power iterations for ``norm="power"`` (default 200), Lanczos steps for ``norm="lanczos"``
            (default :data:`LANCZOS_STEPS`).
        dtype: dtype of the returned value, and computation dtype of ``norm="power"``. Guaranteed
            norms (``"auto"``, ``"exact"``) are always computed in float64 (the rounding margins
            are sized for it) and the result is rounded up to ``dtype``.
        device: where to compute (defaults to the model's device).
        seed: seed of the power-iteration / Lanczos start vectors. ``None`` draws it from the operating
            system (for ``norm="lanczos"``: the probability is over start vectors independent of the
            weights); the seed used is in ``details["lanczos"]["seed"]``.
        sdp_t: the diagonal ``T`` of ``method="lt_sdp"``.
        budget: seconds ``norm="auto"`` may spend certifying large operators exactly (their cost is
            measured before committing; see :mod:`lipzoo.bounds.proved`); it stops earlier once the
            bound is within 0.2% of what exact norms could give (:data:`DEFAULT_BUDGET`).
        progress: tqdm progress bar (``None``: only on a terminal).
        cache: reuse / store the result on disk, keyed by the structure's fingerprint (every number the
            accountant bounds, after every acceptance check), every option and the package's code; every
            entry read is checked before use (:mod:`lipzoo.bounds.cache`). ``None``: only when the environment
            variable ``LIPZOO_CACHE`` names a folder (the ``lipzoo`` command line sets it to
            ``~/.cache/lipzoo/bounds`` unless it is set; ``LIPZOO_CACHE=off`` disables).
        failure_probability: for ``norm="lanczos"``, the probability (over the start vectors) that the
            bound is below the Lipschitz constant.
    """
    _check_choice("mode", mode, MODES)
    return lipschitz_bounds(model, input_shape, method=method, modes=(mode,), norm=norm, max_dense=max_dense,
                            n_iter=n_iter, dtype=dtype, device=device, seed=seed, sdp_t=sdp_t, budget=budget,
                            progress=progress, cache=cache, failure_probability=failure_probability)[mode]


@torch.inference_mode(False)
def lipschitz_bounds(model: nn.Module, input_shape, *, method: str = "liplt", modes=MODES, norm: str = "auto",
                     max_dense: int | None = None, n_iter: int | None = None, dtype: torch.dtype = torch.float64,
                     device=None, seed: int | None = 0, sdp_t: str = "best", budget: float = DEFAULT_BUDGET,
                     progress: bool | None = None, cache: bool | None = None,
                     failure_probability: float = 1e-9) -> dict[str, LipschitzBound]:
    """:func:`lipschitz_bound` for several modes at once, sharing the inner operator norms.

    Runs outside ``torch.inference_mode`` (the refinement's sensitivities and the cache's floors take gradients).
    """
    _check_choice("method", method, METHODS)
    _check_choice("sdp_t", sdp_t, SDP_T)
    for mode in modes:
        _check_choice("mode", mode, MODES)
    _check_choice("norm", norm, NORMS)
    if max_dense is not None and (isinstance(max_dense, bool) or not isinstance(max_dense, int) or max_dense < 0):
        raise ValueError(f"max_dense must be a non-negative int or None, got {max_dense!r}.")
    if not budget >= 0:
        raise ValueError(f"budget must be a number of seconds >= 0, got {budget!r}.")
    if not 0 < failure_probability < 1:
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability!r}.")
    if norm == "lanczos" and method not in ("liplt", "best"):
        raise ValueError(f"norm='lanczos' bounds the LipLT operators: use method='liplt' or 'best', not {method!r}.")
    if n_iter is None:
        n_iter = LANCZOS_STEPS if norm == "lanczos" else 200
    # Every acceptance check runs here, before any cache lookup: a refused module is refused with or without
    # a cache, and the key is the fingerprint of what the accountant bounds (not of the module's repr).
    net, structure = _prepare(model, input_shape, norm=norm, dtype=dtype, device=device, modes=modes)
    fp = structure_fingerprint(structure)
    key = hit = on_certified = on_corrupt = None
    known: dict = {}
    from lipzoo.bounds import cache as _cache

    if cache is None:
        cache = _cache.enabled_by_env()
    if cache and not fp.cacheable:
        logger.info("Not caching this bound: an operator's class is defined outside lipzoo and its source cannot "
                    "be read, so the cache key could not follow a change of its code.")
    if cache and fp.cacheable:
        # The budget is not part of the key: every cached value is proved, so a bound computed with at
        # least the requested tightening time serves any request (`lipzoo bounds --bound-budget 1500`
        # then a plain `lipzoo certify` reuses the tight bound).
        request = {"method": method, "norm": norm, "max_dense": max_dense, "n_iter": n_iter, "dtype": str(dtype),
                   # a bound from fresh start vectors serves any later request for fresh ones
                   "seed": "fresh" if seed is None else seed, "sdp_t": sdp_t,
                   "device": torch.device(device).type if device is not None else _model_device(model),
                   **({"failure_probability": failure_probability} if norm == "lanczos" else {})}
        key = _cache.bound_key(fp.digest, request)
        hit = _cache.load_bounds(key)
        wanted = budget if norm == "auto" else 0.0
        parsed = {}
        for m, record in list((hit or {}).items()):
            try:
                parsed[m] = (_bound_from_record(record, dtype, fp), float(record.get("budget", 0.0)))
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                logger.warning("Ignoring a malformed Lipschitz-bound cache entry (%s); recomputing.", err)
                del hit[m]
        if parsed:
            # a stored bound is a claim: one below what this run proves from below is corrupt
            floors = _floors(net, structure, list(parsed), method=method, norm=norm, seed=seed or 0)
            for m in list(parsed):
                why = _below_floor(parsed[m][0], floors.get(m))
                if why:
                    logger.warning("Ignoring a corrupt Lipschitz-bound cache entry (%s bound %s); recomputing.",
                                   m, why)
                    del parsed[m], hit[m]
        if all(m in parsed and parsed[m][1] >= wanted for m in modes):
            return {m: _vouch(parsed[m][0]) for m in modes}
        if norm == "auto" and method in ("liplt", "best"):
            # certificates of single chains outlive the request: a run cut short by its budget or an interrupt
            # leaves them for the next, which checks them and spends its time on the chains not yet certified
            cert_key = _cache.certificate_key(fp.digest)
            known = _cache.load_certificates(cert_key)

            def on_certified(k, value, estimate):
                _cache.store_certificates(cert_key, {k: (value, estimate)})

            def on_corrupt(ks):
                for k in ks:
                    del known[k]
                _cache.drop_certificates(cert_key, ks)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    out = _lipschitz_bounds(net, structure, method=method, modes=modes, norm=norm, max_dense=max_dense,
                            n_iter=n_iter, dtype=dtype, seed=seed, sdp_t=sdp_t, budget=budget,
                            progress=progress, failure_probability=failure_probability, known=known,
                            on_certified=on_certified, on_corrupt=on_corrupt, fingerprint=fp)
    if key is not None:
        stored = dict(hit or {})
        for m, b in out.items():
            new = {**b.to_dict(), "details": _thaw(b.details), "budget": wanted}
            old = stored.get(m)  # well-formed and above this run's floor (checked above)
            if old is not None and _record_mean(old) < _record_mean(new):
                # the earlier bound (less time) came out tighter: keep it, valid for this budget too
                new = {**old, "budget": max(wanted, float(old.get("budget", 0.0)))}
            stored[m] = new
        _cache.store_bounds(key, stored)
        out = {m: _vouch(_bound_from_record(stored[m], dtype, fp)) for m in modes}
    return out


def _prepare(model: nn.Module, input_shape, *, norm: str, dtype: torch.dtype, device, modes) -> tuple:
    """The working copy of ``model`` and its structure: every acceptance check of the accountant runs here.

    Guaranteed norms are always computed in float64, whatever ``dtype`` asks for: EXACT_MARGIN is sized for
    float64 rounding (a float32 exact norm came out 8e-6 low, above a 1e-6 margin); the value is then rounded
    *up* to ``dtype``, which is the computation dtype of ``norm="power"`` only. The copy keeps the caller's
    train/eval mode: build_structure refuses the modules whose train-mode forward differs (batch norm,
    dropout), instead of silently bounding eval mode."""
    work_dtype = dtype if norm == "power" else torch.float64
    net = copy.deepcopy(model).to(dtype=work_dtype)
    if device is not None:
        net = net.to(device)
    with torch.no_grad():
        structure = build_structure(net, input_shape)
    if any(mode != "global" for mode in modes) and len(structure.output_shape) != 1:
        raise ValueError(f"modes {tuple(modes)} need a model with (B, K) outputs; this one gives "
                         f"{structure.output_shape}. Use mode='global'.")
    return net, structure


_FLOOR_RTOL = 1e-6
"""Relative slack under which a stored bound is compared with this run's floor: the floor's own rounding
(float32 Lanczos estimates are lowered by ESTIMATE_MARGIN = 1e-4 already; gradient norms in float64 are off by
~1e-13), so only a bound genuinely below what the run proves from below is called corrupt."""


def _floors(net: nn.Module, structure: Structure, modes, *, method: str, norm: str, seed: int,
            steps: int = 20, points: int = 4) -> dict:
    """What this run proves from below about every mode's value, cheaply: the Lipschitz constant is at least
    the norm of the gradient of each logit difference at any point (``points`` seeded random inputs, float64);
    and for ``liplt`` / ``naive`` (both at least the exact LipLT value, Theorem 3) the LipLT recursion at
    Lanczos estimates from below of every inner norm (``steps`` batched steps). Empty for estimates."""
    if norm == "power":
        return {}
    from lipzoo.bounds.proved import _lanczos_estimates

    gen = torch.Generator().manual_seed(int(seed) + 7919)
    ref = reference_tensor(structure)
    floors = {m: v for m, v in _gradient_floors(net, structure, modes, gen, points).items()}
    if method in ("liplt", "naive") and norm != "lanczos":
        keys = [(t, j) for t in range(structure.depth) for j in range(-1, t)]
        with torch.no_grad():
            est = _lanczos_estimates(structure, keys, steps, gen, ref.device) if keys else {}
            inner = {k: torch.tensor(v, dtype=torch.float64) for k, v in est.items()}
            rows = output_rows(structure, range(-1, structure.depth))
            for m in modes:
                final = {j: output_norms(r.double(), m) for j, r in rows.items()}
                below = liplt_recursion(structure, inner, final)[0].detach().cpu().double()
                floors[m] = torch.maximum(floors[m], below) if m in floors else below
    return floors


def _gradient_floors(net: nn.Module, structure: Structure, modes, gen, points: int) -> dict:
    """Per mode, the largest gradient norm of the bounded quantity at ``points`` random inputs (float64)."""
    ref = reference_tensor(structure)
    with torch.enable_grad():
        x = torch.rand(points, *structure.input_shape, generator=gen, dtype=torch.float64).to(ref.device)
        x.requires_grad_(True)
        z = net(x.to(ref.dtype) if ref.numel() else x).double().reshape(points, -1)
        k = z.shape[1]
        jac = torch.stack([torch.autograd.grad(z[:, i].sum(), x, retain_graph=i + 1 < k)[0].reshape(points, -1)
                           for i in range(k)], 1)  # (points, K, n)
    jac = jac.detach().cpu()
    out = {}
    for m in modes:
        if m == "global":
            out[m] = torch.linalg.matrix_norm(jac, 2).max()
        elif m == "per_class":
            out[m] = jac.norm(dim=2).max(0).values
        else:
            out[m] = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=3).max(0).values
    return out


def _below_floor(bound: LipschitzBound, floor) -> str | None:
    """Why ``bound`` cannot be right (it is below ``floor`` somewhere), or None."""
    if floor is None or not bound.guaranteed and bound.guarantee != "probabilistic":
        return None
    value = bound.value.double()
    floor = torch.as_tensor(floor, dtype=torch.float64).reshape(value.shape) * (1 - _FLOOR_RTOL)
    bad = value < floor
    if bound.mode == "pairwise":
        bad &= ~torch.eye(value.shape[0], dtype=torch.bool)
    if not bool(bad.any()):
        return None
    i = int(bad.reshape(-1).nonzero()[0])
    return (f"{value.reshape(-1)[i].item():.6g} at entry {i} is below {floor.reshape(-1)[i].item():.6g}, which this "
            "run proves from below")


def _record_mean(record: dict) -> float:
    return float(torch.tensor(record["value"], dtype=torch.float64).mean())


def _model_device(model: nn.Module) -> str:
    t = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return t.device.type if t is not None else "cpu"


def _bound_from_record(record, dtype: torch.dtype, fp) -> LipschitzBound:
    """A cached bound, its value in the requested ``dtype``: the record holds the values that were
    returned in that dtype (the key includes it), so the conversion is exact. It names the structure it was
    looked up for (the key is that structure's fingerprint); not vouched for until checked."""
    return LipschitzBound(value=torch.tensor(record["value"], dtype=dtype), guaranteed=record["guaranteed"],
                          guarantee=record["guarantee"], method=record["method"], mode=record["mode"],
                          norm=record["norm"], layer_bounds=record["layer_bounds"], details=record["details"],
                          failure_probability=record.get("failure_probability"), fingerprint=fp.digest,
                          model_summary=fp.summary)


def _lipschitz_bounds(net, structure, *, method, modes, norm, max_dense, n_iter, dtype, seed, sdp_t, budget,
                      progress, failure_probability, known, on_certified, on_corrupt,
                      fingerprint) -> dict[str, LipschitzBound]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        margin = 0.0 if norm == "power" else EXACT_MARGIN
        L = structure.depth
        kinds: list[str] = []
        values = {}
        details: dict = {}
        fail = 0.0
        eclipse = None
        if method in ("eclipse", "best"):
            try:
                eclipse = eclipse_bound(structure, modes)
            except (TypeError, ValueError) as err:
                if method == "eclipse":
                    raise
                details["eclipse"] = f"not applicable: {err}"
            else:
                details["eclipse"] = {"value": {m: v.tolist() for m, v in eclipse.items()}}
        if method == "eclipse":
            values, m = dict(eclipse), []
            kinds.append(ECLIPSE_GUARANTEE)
        elif method in ("liplt", "best"):
            inner_keys = [(t, j) for t in range(L) for j in range(-1, t)]
            rows = output_rows(structure, range(-1, L))
            exact_out: dict = {}  # per mode, the output norms in float64 without margin: computed once

            def final_norms(mode: str, margin: float) -> dict:
                if mode not in exact_out:
                    exact_out[mode] = {j: output_norms(r.double(), mode) for j, r in rows.items()}
                return {j: with_margin(v, margin, rows[j].dtype) for j, v in exact_out[mode].items()}
            if norm == "power":
                inner = _power_norms(structure, inner_keys, n_iter, gen)
                kinds.append("estimate")
            elif norm == "lanczos":
                lz = lanczos_inner_norms(structure, inner_keys, steps=n_iter, failure_probability=failure_probability,
                                         seed=seed, progress=progress, device=reference_tensor(structure).device)
                inner = {k: torch.tensor(x.value, dtype=torch.float64) for k, x in lz.items()}
                kinds.append("probabilistic")
                fail = failure_probability
                details["lanczos"] = {"seed": seed, "steps": n_iter, "failure_probability": failure_probability,
                                      "epsilon": {f"{t},{j}": x.epsilon for (t, j), x in lz.items()},
                                      "ritz_norm": {f"{t},{j}": x.estimate for (t, j), x in lz.items()}}
            elif norm == "auto":
                final_global = final_norms("global", margin)
                proved = proved_inner_norms(
                    structure, inner_keys, objective=lambda inner: liplt_recursion(structure, inner, final_global)[0],
                    # an explicit max_dense is a hard cap on materialization: no refinement beyond it
                    small=SMALL_DENSE if max_dense is None else max_dense,
                    small_input=SMALL_INPUT if max_dense is None else max_dense,
                    budget=budget if max_dense is None else 0.0, seed=seed,
                    progress=progress, device=reference_tensor(structure).device, known=known,
                    on_certified=on_certified, on_corrupt=on_corrupt)
                inner = {k: torch.tensor(p.value, dtype=torch.float64) for k, p in proved.items()}
                kinds.extend(p.guarantee for p in proved.values())
                how = {f"{t},{j}": {"bound": p.value, "estimate": p.estimate, "guarantee": p.guarantee, "how": p.how}
                       for (t, j), p in proved.items()}
                below = {k: torch.tensor(min(p.estimate, p.value), dtype=torch.float64) for k, p in proved.items()}
            else:
                inner = {}
                limit = max_dense if norm == "auto" else 10**12
                for (t, j) in inner_keys:
                    res = chain_norm(structure.chain(t, j), structure.space_shape(t, j)[0], max_dense=limit)
                    inner[(t, j)] = res.value
                    kinds.append(res.guarantee)
            for mode in modes:
                values[mode], m = liplt_recursion(structure, inner, final_norms(mode, margin))
            details["inner"] = {f"{t},{j}": float(v) for (t, j), v in inner.items()}
            if norm == "auto":
                details["inner_proofs"] = how
                details["certificates_reused"] = sorted(f"{t},{j}" for (t, j) in known if (t, j) in proved)
                # each norm's estimate is from below (a Ritz value) and the recursion is monotone: the exact
                # LipLT value lies between this and the bound, which tells how loose the bound can be
                details["liplt_at_estimates"] = {
                    mode: liplt_recursion(structure, below, final_norms(mode, 0.0))[0].tolist() for mode in modes}
            if eclipse is not None:  # method="best": both are upper bounds, so is their minimum
                details["liplt"] = {mode: values[mode].tolist() for mode in modes}
                values = {mode: torch.minimum(values[mode], eclipse[mode].to(values[mode])) for mode in modes}
                kinds.append(ECLIPSE_GUARANTEE)
        else:
            cap = SMALL_DENSE if max_dense is None else max_dense
            layer = (naive_layer(norm, cap, n_iter, gen) if method == "naive"
                     else sdp_layer(norm, cap, n_iter, gen, sdp_t))
            total, m, layer_details, layer_kinds = layerwise(structure, layer)
            details.update(layer_details)
            kinds.extend(layer_kinds)
            out_only = Structure([], structure.output, structure.blocks[-1].next_shape if structure.blocks
                                 else structure.input_shape, structure.output_shape)
            r = output_rows(out_only, [-1])[-1]
            for mode in modes:
                values[mode] = output_norms(r, mode, margin) * total
    guarantee = weakest_guarantee(kinds + ["exact"])
    _check_representable(structure, values)
    details["input_shape"] = list(structure.input_shape)
    values = {mode: round_cast(v.detach(), dtype, float("inf")).cpu() for mode, v in values.items()}
    return {mode: _vouch(LipschitzBound(
        value=values[mode], guaranteed=guarantee in PROVED, failure_probability=fail if guarantee == "probabilistic"
        else None, guarantee=guarantee, method=method, mode=mode, norm=norm,
        layer_bounds=[round_cast(torch.as_tensor(x).detach(), torch.float64, float("inf")).item() for x in m],
        details=details, fingerprint=fingerprint.digest, model_summary=fingerprint.summary)) for mode in modes}


def _check_representable(structure: Structure, values: dict) -> None:
    """Refuse a bound of 0 that is an underflow: float64 cannot represent a Lipschitz constant under ~5e-324,
    and sweeps through tiny weights lose it to zero. 0 is accepted only for a network that is exactly constant
    by construction (an operator on every path to the output holds only zeros)."""
    for mode, v in values.items():
        v = v.detach().double().cpu()
        if mode == "pairwise":
            v = v[~torch.eye(v.shape[0], dtype=torch.bool)]
        if bool((v > 0).all()) or _has_zero_operator(structure):
            continue
        raise ValueError(f"the {mode} Lipschitz bound underflowed to 0 for a network that is not constant by "
                         "construction: its constant lies below float64's range (~5e-324); scale the weights up "
                         "(the bound scales with them).")


def _has_zero_operator(structure: Structure) -> bool:
    ops = [b.W for b in structure.blocks] + [structure.output]
    return any(torch.is_tensor(v) and v.numel() and not bool(v.any()) or not torch.is_tensor(v) and v == 0
               for op in ops for _, v in operator_values(op))


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
