"""The public entry points of the accountant: :func:`lipschitz_bound` and :func:`lipschitz_bounds`.

They build the structure (every acceptance check), consult the cache and a shipped certificate, obtain the inner
operator norms on the requested path (proved, exact, probabilistic or estimated) and apply eq. (16)
(:mod:`lipzoo.bounds.recursion`) per mode, or the per-layer products of :mod:`lipzoo.bounds.layerwise`.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import cast

import torch
from torch import nn

from lipzoo.bounds.certificate import MODES, PROVED, LipschitzBound, _thaw, _vouch, check_bound_for
from lipzoo.bounds.eclipse import GUARANTEE as ECLIPSE_GUARANTEE
from lipzoo.bounds.eclipse import eclipse_bound
from lipzoo.bounds.fingerprint import structure_fingerprint
from lipzoo.bounds.floors import below_floor, floors
from lipzoo.bounds.lanczos import lanczos_inner_norms
from lipzoo.bounds.layerwise import layerwise, naive_layer, sdp_layer
from lipzoo.bounds.norms import (EXACT_MARGIN, chain_norm, output_norms, reference_tensor, round_cast,
                                 weakest_guarantee, with_margin)
from lipzoo.bounds.options import BoundOptions
from lipzoo.bounds.proved import proved_inner_norms
from lipzoo.bounds.recursion import liplt_recursion, output_rows
from lipzoo.bounds.shipped import known_chains
from lipzoo.bounds.structure import Structure, build_structure
from lipzoo.bounds.sweep import forward_sweep, power_iteration, row_norms
from lipzoo.layers.torch_modules import operator_values

logger = logging.getLogger(__name__)

__all__ = ["LipschitzBound", "check_bound_for", "lipschitz_bound", "lipschitz_bounds", "output_norms", "liplt_recursion"]

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


SMALL_DENSE = 4096
"""Under ``norm="auto"`` without ``max_dense``: operators with a side this small are always certified exactly
(the previous fixed ``max_dense``, so the bound is never looser than before; shared sweeps and Cholesky
certificates make it cheaper). With 1024 the refinement could not afford the 4096-wide CIFAR operators on
a loaded 2-core machine and the shipped CIFAR-10 bound came out 14% above the estimate instead of 2%."""
SMALL_INPUT = 4096
"""... and operators from the network's input when the input has at most this many dimensions."""


_OPTION_FIELDS = tuple(f.name for f in BoundOptions.__dataclass_fields__.values())


def lipschitz_bound(model: nn.Module, input_shape, *, mode: str = "pairwise", options: BoundOptions | None = None,
                    device=None, progress: bool | None = None, cache: bool | None = None, certificate=None,
                    **option_fields) -> LipschitzBound:
    """Upper bound on the Lipschitz constant of a model's logits (or logit differences).

    The value is a function of the model, ``input_shape``, the options and lipzoo's code: the same call gives
    the same bits whatever the machine's load, with or without the cache (docs/bounds.md, "Reproducible").

    Args:
        model: a ``nn.Sequential`` (possibly nested) of lipzoo layers and supported torch modules.
        input_shape: per-sample input shape, e.g. ``(3, 32, 32)``.
        mode: ``"global"``, ``"per_class"`` or ``"pairwise"``.
        options: a :class:`~lipzoo.bounds.options.BoundOptions`; or give its fields as keywords (below).
        device: where to compute (defaults to the model's device).
        progress: tqdm progress bar (``None``: only on a terminal).
        cache: reuse / store the result on disk, keyed by the structure's fingerprint (every number the
            accountant bounds, after every acceptance check), the options and the package's code; every
            entry read is checked before use (:mod:`lipzoo.bounds.cache`). ``None`` (default): on, unless
            ``LIPZOO_CACHE=off`` (the folder is ``$LIPZOO_CACHE``, default ``~/.cache/lipzoo/bounds``). A cached
            bound is the bound a fresh run would return.
        certificate: the model's shipped certificate record (:mod:`lipzoo.bounds.shipped`), checked and used for
            its certified chain norms (another model's is refused).
        **option_fields: the fields of :class:`~lipzoo.bounds.options.BoundOptions`, as listed under Other
            Parameters.

    Other Parameters:
        method: ``"liplt"`` (Theorem 3), ``"naive"`` (product of per-layer eq. (11) constants),
            ``"lt_sdp"`` (product of per-layer Theorem 2 constants, the l2 refinement for
            residual layers; ``sdp_t`` picks ``T``: ``"sn"``, ``"aol"``, ``"sll"`` or ``"best"``),
            ``"eclipse"`` (the certified ECLipsE-style bound of :mod:`lipzoo.bounds.eclipse`, for
            networks without skip branches whose layers have sides <= 4096; exact, ``norm`` unused) or
            ``"best"`` (the entrywise minimum of ``"liplt"`` and, where it applies, ``"eclipse"``:
            both are upper bounds, so is their minimum).
        norm: how operator norms are obtained: ``"auto"`` (exact when the smaller side has at most
            ``max_dense`` dimensions, proved upper bounds otherwise: ``guaranteed=True``),
            ``"exact"`` (materialize every operator; slow for large convolutions), ``"lanczos"``
            (``n_iter`` batched Lanczos steps from random starts: an upper bound except with
            probability ``failure_probability``, ``guarantee="probabilistic"``; seconds, and within
            a fraction of a percent of the converged norms, see :mod:`lipzoo.bounds.lanczos`) or
            ``"power"`` (``n_iter`` power iterations: an estimate, ``guaranteed=False``).
        max_dense: under ``norm="auto"``, operators with a side of at most this many dimensions are
            always certified exactly (default :data:`SMALL_DENSE`); larger ones get proved split
            bounds, then the ones whose looseness costs most are certified exactly within ``effort``.
        effort: under ``norm="auto"``, the work (:mod:`lipzoo.bounds.cost`: units of 1e9 GEMM-equivalent flops,
            counted from shapes, never timed) the refinement may spend certifying large operators exactly:
            ``"none"``, ``"low"``, ``"medium"`` (default), ``"high"`` or a number of units. It stops earlier
            once the bound is within 0.2 % of what exact norms could give.
        n_iter: power iterations for ``norm="power"`` (default 200), Lanczos steps for ``norm="lanczos"``
            (default 320).
        dtype: dtype of the returned value, and computation dtype of ``norm="power"``. Guaranteed
            norms (``"auto"``, ``"exact"``) are always computed in float64 (the rounding margins
            are sized for it) and the result is rounded up to ``dtype``.
        seed: seed of every random start vector. ``None`` draws it from the operating system (for
            ``norm="lanczos"``: the probability is over start vectors independent of the weights); the seed
            used is in ``details["seed"]``.
        sdp_t: the diagonal ``T`` of ``method="lt_sdp"``.
        failure_probability: for ``norm="lanczos"``, the probability (over the start vectors) that the
            bound is below the Lipschitz constant.
    """
    _check_choice("mode", mode, MODES)
    return lipschitz_bounds(model, input_shape, modes=(mode,), options=options, device=device, progress=progress,
                            cache=cache, certificate=certificate, **option_fields)[mode]


def bound_options(options: BoundOptions | None = None, **fields) -> BoundOptions:
    """``options`` (or the defaults) with ``fields`` replaced; ``budget=`` (seconds, lipzoo 0.1) is refused with
    the fix."""
    if "budget" in fields:
        raise TypeError("budget= (seconds) was replaced by effort= (work counted from shapes, so a bound no longer "
                        "depends on the machine's speed or load): use effort='low' | 'medium' | 'high' or a number "
                        "of work units (docs/bounds.md).")
    unknown = sorted(set(fields) - set(_OPTION_FIELDS))
    if unknown:
        raise TypeError(f"unknown bound option(s) {unknown}; the options are {list(_OPTION_FIELDS)}.")
    if options is None:
        return BoundOptions(**fields)
    return options.replace(**fields) if fields else options


@torch.inference_mode(False)
def lipschitz_bounds(model: nn.Module, input_shape, *, modes=MODES, options: BoundOptions | None = None,
                     device=None, progress: bool | None = None, cache: bool | None = None,
                     certificate=None, **option_fields) -> dict[str, LipschitzBound]:
    """:func:`lipschitz_bound` for several modes at once, sharing the inner operator norms.

    ``certificate``: a shipped certificate record of this very model (:mod:`lipzoo.bounds.shipped`; another
    model's is refused): its certified chain norms are checked against this run's estimates from below and used
    where the run would compute them, as the certificate cache is. Runs outside ``torch.inference_mode`` (the
    refinement's sensitivities and the cache's floors take gradients).
    """
    opts = bound_options(options, **option_fields)
    for mode in modes:
        _check_choice("mode", mode, MODES)
    # Every acceptance check runs here, before any cache lookup: a refused module is refused with or without
    # a cache, and the key is the fingerprint of what the accountant bounds (not of the module's repr).
    net, structure = _prepare(model, input_shape, norm=opts.norm, dtype=opts.dtype, device=device, modes=modes)
    fp = structure_fingerprint(structure)
    seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    device_type = torch.device(device).type if device is not None else _model_device(model)
    key = on_certified = on_corrupt = None
    known = {} if certificate is None or opts.norm != "auto" else known_chains(certificate, fp.digest)
    from lipzoo.bounds import cache as _cache

    if cache is None:
        cache = _cache.cache_dir() is not None
    if cache and not fp.cacheable:
        logger.info("Not caching this bound: an operator's class is defined outside lipzoo and its source cannot "
                    "be read, so the cache key could not follow a change of its code.")
    if cache and fp.cacheable:
        key = _cache.bound_key(fp.digest, {**opts.cache_request(), "device": device_type})
        hit = _cache.load_bounds(key) or {}
        parsed = {}
        for m in modes:
            if m not in hit:
                continue
            try:
                parsed[m] = _bound_from_record(hit[m], opts.dtype, fp)
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                logger.warning("Ignoring a malformed Lipschitz-bound cache entry (%s); recomputing.", err)
        if len(parsed) == len(modes):
            # a stored bound is a claim: one below what this run proves from below is corrupt
            low = floors(net, structure, list(parsed), method=opts.method, norm=opts.norm, seed=seed)
            bad = {m: below_floor(parsed[m], low.get(m)) for m in parsed}
            for m, why in bad.items():
                if why:
                    logger.warning("Ignoring a corrupt Lipschitz-bound cache entry (%s bound %s); recomputing.", m, why)
            if not any(bad.values()):
                return {m: _vouch(parsed[m]) for m in modes}
        if opts.norm == "auto" and opts.method in ("liplt", "best"):
            # certificates of single chains outlive the request (an interrupted run, another effort): checked,
            # then used where this run would compute them, so the result is what a fresh run returns
            cert_key = _cache.certificate_key(fp.digest, device_type)
            known = {**_cache.load_certificates(cert_key), **known}
            on_certified, on_corrupt = _cache.certificate_hooks(cert_key)
    out = _lipschitz_bounds(net, structure, opts, modes=modes, seed=seed, progress=progress, known=known,
                            on_certified=on_certified, on_corrupt=on_corrupt, fingerprint=fp)
    if key is not None:
        _cache.store_bounds(key, {m: {**b.to_dict(), "details": _thaw(b.details)} for m, b in out.items()})
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


def _lipschitz_bounds(net, structure, opts: BoundOptions, *, modes, seed, progress, known, on_certified, on_corrupt,
                      fingerprint) -> dict[str, LipschitzBound]:
    method, norm, max_dense, dtype = opts.method, opts.norm, opts.max_dense, opts.dtype
    n_iter = cast(int, opts.n_iter)  # BoundOptions resolves None to the norm path's default
    failure_probability = opts.failure_probability
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        margin = 0.0 if norm == "power" else EXACT_MARGIN
        L = structure.depth
        kinds: list[str] = []
        values = {}
        details: dict = {}
        fail = 0.0
        m: list  # the layer bounds m_t
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
            values, m = dict(cast(dict, eclipse)), []  # set: method="eclipse" raised otherwise
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
                stats: dict = {}
                proved = proved_inner_norms(
                    structure, inner_keys, objective=lambda inner: liplt_recursion(structure, inner, final_global)[0],
                    # an explicit max_dense is a hard cap on materialization: no refinement beyond it
                    small=SMALL_DENSE if max_dense is None else max_dense,
                    small_input=SMALL_INPUT if max_dense is None else max_dense,
                    effort=opts.effort_units if max_dense is None else 0.0, seed=seed,
                    progress=progress, device=reference_tensor(structure).device, known=known,
                    on_certified=on_certified, on_corrupt=on_corrupt, stats=stats)
                if stats.get("reused"):
                    logger.info("%d of %d inner norms from stored certificates (checked against this run's "
                                "estimates)", stats["reused"], len(inner_keys))
                inner = {k: torch.tensor(p.value, dtype=torch.float64) for k, p in proved.items()}
                kinds.extend(p.guarantee for p in proved.values())
                how = {f"{t},{j}": {"bound": p.value, "estimate": p.estimate, "guarantee": p.guarantee, "how": p.how}
                       for (t, j), p in proved.items()}
                below = {k: torch.tensor(min(p.estimate, p.value), dtype=torch.float64) for k, p in proved.items()}
            else:
                inner = {}
                limit = cast(int, max_dense) if norm == "auto" else 10**12
                for (t, j) in inner_keys:
                    res = chain_norm(structure.chain(t, j), structure.space_shape(t, j)[0], max_dense=limit)
                    inner[(t, j)] = res.value
                    kinds.append(res.guarantee)
            for mode in modes:
                values[mode], m = liplt_recursion(structure, inner, final_norms(mode, margin))
            details["inner"] = {f"{t},{j}": float(v) for (t, j), v in inner.items()}
            if norm == "auto":
                details["inner_proofs"] = how
                details["work"] = {"effort": stats["effort"], "spent": stats["work"], "stopped": stats["stopped"]}
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
                     else sdp_layer(norm, cap, n_iter, gen, opts.sdp_t))
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
    details["options"] = opts.to_dict()
    details["seed"] = seed
    values = {mode: round_cast(v.detach(), dtype, float("inf")).cpu() for mode, v in values.items()}
    return {mode: _vouch(LipschitzBound(
        value=values[mode], guaranteed=guarantee in PROVED, failure_probability=fail if guarantee == "probabilistic"
        else None, guarantee=guarantee, method=method, mode=mode, norm=norm,
        layer_bounds=tuple(round_cast(torch.as_tensor(x).detach(), torch.float64, float("inf")).item() for x in m),
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
