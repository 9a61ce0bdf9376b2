"""Certified accuracy, PGD accuracy and the soundness check between them.

Convention: a point is certified at ``eps`` iff its certified radius (eq. 4) is ``> eps``. All
accuracies are fractions in [0, 1]; ``eps`` is an l2 radius in pixel units ([0, 1] images) and may
be given as an exact fraction string such as ``"36/255"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lipzoo.bounds.certificate import LipschitzBound, check_bound_for
from lipzoo.bounds.radius import certified_radius as radius_from_tensor
from lipzoo.bounds.radius import pairwise_radii
from lipzoo.certify.attacks import margin_loss, pgd_l2
from lipzoo.certify.rounding import rounding_plan

__all__ = ["certified_radius", "pairwise_radii", "pairwise_constants", "certified_accuracy", "evaluate",
           "parse_eps", "radius_kind", "UnsoundBoundError"]

logger = logging.getLogger(__name__)

_ATTACK_KEYS = ("steps", "restarts", "step_size", "random_start", "seed", "batch_size", "attack_all", "workers")


def parse_eps(eps: float | int | str) -> float:
    """Turn ``1.58``, ``"1.58"``, ``"36/255"`` or ``0`` into a float ``>= 0`` (for radii comparisons).

    A thin float view of :func:`lipzoo.meta.parse_eps` (``allow_zero=True``), the one parser; unlike
    it, a Python float is accepted here (its exact binary value is used), since a float radius is
    what callers of the metrics have.

    Raises:
        ValueError: if ``eps`` is not a number / fraction string, or is negative or not finite.
    """
    from lipzoo.meta import parse_eps as parse_exact

    value: float | int | str | Fraction = eps
    if isinstance(eps, float) and not isinstance(eps, bool):
        if not math.isfinite(eps):
            raise ValueError(f"eps must be finite and >= 0; got {eps!r}.")
        value = Fraction(eps)  # exact: float(Fraction(x)) == x
    try:
        return float(parse_exact(value, allow_zero=True))
    except (TypeError, ValueError) as err:
        negative = isinstance(err, ValueError) and "must be >= 0" in str(err)
        what = "finite and >= 0" if negative else "a number or a fraction string like '36/255'"
        raise ValueError(f"eps must be {what}; got {eps!r}.") from None


def _next_up(x: Tensor) -> Tensor:
    return torch.nextafter(x, torch.full_like(x, float("inf")))


def radius_kind(bound: LipschitzBound) -> str:
    """The word every output uses: ``"certified"`` for a proved bound, ``"probabilistic"`` for one that holds
    except with a stated probability (``norm="lanczos"``), ``"estimated"`` for an estimate and for any bound
    the accountant did not vouch for (built by hand or from a record: ``bound.trusted`` is False)."""
    if not bound.trusted:
        return "estimated"
    if bound.guaranteed:
        return "certified"
    return "probabilistic" if bound.guarantee == "probabilistic" else "estimated"


def _check_bound_type(bound: Any, allow_estimate: bool) -> None:
    if not isinstance(bound, LipschitzBound):
        raise TypeError(
            f"bound must be a lipzoo.LipschitzBound (from lipzoo.lipschitz_bound), got {type(bound).__name__}. "
            "A raw tensor carries no guarantee; for a training metric use "
            "lipzoo.bounds.radius.certified_radius(logits, labels, tensor).")
    if not bound.trusted and not allow_estimate:
        raise ValueError(
            f"this {bound.guarantee} bound was not computed by lipzoo.lipschitz_bound (built by hand or from a stored "
            "record), so it is not a certificate: compute the model's bound with lipzoo.lipschitz_bound, or pass "
            "allow_estimate=True to get radii labelled 'estimated'.")
    if bound.guarantee == "estimate" and not allow_estimate:
        raise ValueError(
            f"the bound is an estimate (norm={bound.norm!r}, guarantee='estimate'): it may under-estimate the "
            "Lipschitz constant, so its radii are not certificates. Compute a guaranteed bound "
            "(norm='auto' or 'exact') or pass allow_estimate=True to get radii labelled 'estimated'.")


def pairwise_constants(bound: LipschitzBound, num_classes: int | None = None, *,
                       allow_estimate: bool = False) -> Tensor:
    """The ``(K, K)`` float64 pairwise constants a :class:`~lipzoo.LipschitzBound` proves.

    ``pairwise`` bounds are used as they are (symmetrized by the entrywise max); ``per_class``
    ones give ``L_ij <= L_i + L_j`` and a ``global`` one ``L_ij <= sqrt(2) L`` (``z_i - z_j =
    (e_i - e_j)^T z`` and ``||e_i - e_j|| = sqrt(2)``), each rounded up by one ulp.

    Args:
        bound: the result of :func:`lipzoo.lipschitz_bound`.
        num_classes: the ``K`` of the logits it will be used with (required for a global bound).
        allow_estimate: accept ``guarantee="estimate"`` (power iteration). Radii from an estimate
            are not certificates, and every output of :func:`evaluate` then says ``estimated``.

    Raises:
        TypeError: if ``bound`` is not a :class:`~lipzoo.LipschitzBound` (e.g. a raw tensor).
        ValueError: on an estimate without ``allow_estimate``, a class-count mismatch, or values
            that are not finite and non-negative.
    """
    _check_bound_type(bound, allow_estimate)
    value = bound.value.detach().to(torch.float64).cpu()
    if not torch.isfinite(value).all() or (value < 0).any():
        raise ValueError(f"the {bound.mode} bound must be finite and non-negative; got {value.tolist()}.")
    k = bound.num_classes if num_classes is None else int(num_classes)
    if k is None:
        raise ValueError("num_classes is required to use a global bound (mode='global').")
    if bound.mode != "global" and bound.num_classes != k:
        raise ValueError(f"the {bound.mode} bound is for {bound.num_classes} classes but the logits have {k}.")
    eye = torch.eye(k, dtype=torch.bool)
    if bound.mode == "pairwise":
        if value.shape != (k, k):
            raise ValueError(f"a pairwise bound must be ({k}, {k}); got {tuple(value.shape)}.")
        L = torch.maximum(value, value.T)
    elif bound.mode == "per_class":
        L = _next_up(value[:, None] + value[None, :])
    else:
        L = _next_up(value.reshape(()) * _next_up(torch.tensor(2.0, dtype=torch.float64).sqrt())).expand(k, k)
    return L.masked_fill(eye, 0.0).contiguous()


def certified_radius(logits: Tensor, labels: Tensor, bound: LipschitzBound, *, model: nn.Module | None,
                     margin_error: Tensor | float, input_shape=None, allow_estimate: bool = False) -> Tensor:
    """Certified l2 radius of eq. (4) from a :class:`~lipzoo.LipschitzBound`; 0 when misclassified.

    Checks the bound (see :func:`pairwise_constants`: guaranteed unless ``allow_estimate``, the
    number of classes, finite and non-negative values; per-class and global bounds are converted
    soundly) and then evaluates :func:`lipzoo.bounds.radius.certified_radius`, which rounds down.
    A point is certified at ``eps`` iff ``radius > eps`` (strict).

    The logits were computed in floating point, so the radius is ``min_i (m_i - 2 E) / L_yi``:
    ``margin_error`` (required, keyword) is the caller's claim ``E`` -- a float or an ``(N,)``
    tensor bounding ``|computed - exact|`` of every logit difference for every input in the ball of
    the returned radius (:func:`lipzoo.certify.rounding.margin_error_bound` with ``radius`` at least
    the radius for ``margin_error=0`` proves one). Passing ``margin_error=0`` explicitly assumes exact
    arithmetic: the result is then *not* a certificate for the network as run in floating point.
    :func:`evaluate` computes ``E`` from the model itself.

    ``model`` (required, keyword) is the network the logits came from: the bound must be its own
    (:func:`lipzoo.bounds.certificate.check_bound_for`; ``input_shape`` defaults to the one the bound was
    computed for). ``model=None`` is accepted only with ``allow_estimate=True`` (nothing is then a
    certificate).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (N, K) tensor; got {got}. Flatten or batch the logits first.")
    L = pairwise_constants(bound, logits.shape[1], allow_estimate=allow_estimate)  # type, trust, classes, values
    if model is not None:
        shape = input_shape if input_shape is not None else bound.details.get("input_shape")
        check_bound_for(bound, model, shape, where="certified_radius", allow_untrusted=allow_estimate)
    elif not allow_estimate:
        raise ValueError("certified_radius needs model= (the network the logits came from) to check that the bound "
                         "is this model's; or use lipzoo.certify.evaluate.")
    err = torch.as_tensor(margin_error, dtype=torch.float64, device=logits.device)
    if err.dim() not in (0, 1) or (err.dim() == 1 and err.shape[0] != logits.shape[0]):
        raise ValueError(f"margin_error must be a float or an ({logits.shape[0]},) tensor; got {tuple(err.shape)}.")
    return radius_from_tensor(logits, labels, L.to(logits.device), margin_error=2 * err)


def certified_accuracy(radii: Tensor, eps: float | str) -> float:
    """Fraction of points with certified radius ``> eps`` (misclassified points have radius 0).

    Args:
        radii: ``(N,)`` certified radii, e.g. from :func:`certified_radius`.
        eps: l2 radius (number or fraction string).

    Raises:
        ValueError: if ``radii`` is not a non-empty 1-D tensor without NaN, or ``eps`` is invalid.
    """
    if not isinstance(radii, Tensor) or radii.dim() != 1 or radii.numel() == 0:
        got = tuple(radii.shape) if isinstance(radii, Tensor) else type(radii).__name__
        raise ValueError(f"radii must be a non-empty 1-D tensor; got {got}.")
    if torch.isnan(radii).any():
        raise ValueError("radii contain NaN; check the logits and the pairwise Lipschitz constants.")
    return (radii > parse_eps(eps)).double().mean().item()


def _eps_key(eps: float | int | str) -> str:
    return eps if isinstance(eps, str) else f"{eps:g}"


class UnsoundBoundError(RuntimeError):
    """The attack broke a point the bound certifies: the "guaranteed" bound is wrong (``attack_all`` audit)."""


def _check_attack(attack: dict[str, Any] | None) -> dict[str, Any] | None:
    if attack is None:
        return None
    if not isinstance(attack, dict):
        raise ValueError(f"attack must be None or a dict with keys {_ATTACK_KEYS}; got {type(attack).__name__}.")
    unknown = sorted(set(attack) - set(_ATTACK_KEYS))
    if unknown:
        raise ValueError(f"attack has unknown keys {unknown}; supported keys are {_ATTACK_KEYS}.")
    for key in ("batch_size", "workers"):
        value = attack.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"attack {key} must be None or an int >= 1; got {value!r}.")
    return dict(attack)


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.get_default_dtype()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# Points attacked together. On a CPU the network's activations at ~128 images stay in the caches: per
# image, forward + backward of crm-mnist-4c3f took about half as long at 128 as at 512 (docs/benchmarks.md).
_CPU_ATTACK_BATCH = 128
_ATTACK_BATCH = 512  # other devices: about the loader batches the attack ran on before


class _AttackQueue:
    """Points waiting to be attacked at one eps, attacked ``batch`` at a time (across loader batches).

    Each batch of points gets its own random generator, seeded in order from ``generator``, so the
    verdicts do not depend on ``pool`` (a thread pool running batches side by side, or None).
    """

    def __init__(self, model: nn.Module, eps: float, batch: int, settings: dict[str, Any],
                 generator: torch.Generator, pool: ThreadPoolExecutor | None):
        self.model, self.eps, self.batch, self.settings = model, eps, batch, settings
        self.generator, self.pool = generator, pool
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []
        self.index: list[Tensor] = []
        self.pending = 0
        self.done: list[Any] = []  # (index, broken) or a Future of it

    def add(self, x: Tensor, y: Tensor, index: Tensor) -> None:
        if index.numel():
            self.x.append(x)
            self.y.append(y)
            self.index.append(index)
            self.pending += index.numel()
        while self.pending >= self.batch:
            self._run(self.batch)

    def flush(self) -> None:
        if self.pending:
            self._run(self.pending)

    def _run(self, n: int) -> None:
        x, y, index = torch.cat(self.x), torch.cat(self.y), torch.cat(self.index)
        self.x, self.y, self.index = [x[n:]], [y[n:]], [index[n:]]
        self.pending -= n
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator, device=self.generator.device))
        job = (x[:n], y[:n], index[:n], seed)
        self.done.append(self.pool.submit(self._attack, *job) if self.pool is not None else self._attack(*job))

    def _attack(self, x: Tensor, y: Tensor, index: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x_adv = pgd_l2(self.model, x, y, self.eps, generator=generator, stop_when_broken=True, **self.settings)
        with torch.inference_mode():  # the adversarial examples are checked by a fresh forward pass
            broken = self.model(x_adv).argmax(dim=1) != y
        return index.cpu(), broken.cpu()

    def results(self) -> tuple[Tensor, Tensor]:
        done = [d.result() if isinstance(d, Future) else d for d in self.done]
        if not done:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
        return torch.cat([i for i, _ in done]), torch.cat([b for _, b in done])


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    bound: LipschitzBound,
    eps_list: Sequence[float | str],
    *,
    allow_estimate: bool = False,
    attack: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    arithmetic: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
    margin_error: float | None = None,
) -> dict[str, Any]:
    """Clean, certified and (optionally) PGD accuracy of ``model`` over ``loader``.

    The model is evaluated in eval mode (its previous mode is restored). Points already
    misclassified count as broken by the attack. With a guaranteed bound, points certified at an
    eps (radius > eps) are not attacked at that eps and count as not broken: the certificate proves
    that no adversarial example exists in their ball, so attacking them could not change the PGD
    accuracy (only an unsound bound could; ``attack_all=True`` audits that). So PGD runs on the
    correctly classified, uncertified points only. With an estimate (``allow_estimate``) nothing is
    proved and every correctly classified point is attacked. A point counts as broken as soon as
    any PGD iterate inside the ball is misclassified (it then leaves the attack batch).

    Rounding: the radii hold for the network *as computed*, in the arithmetic it runs in. Per point,
    :func:`lipzoo.certify.rounding.margin_error_bound` proves a bound ``E`` on the floating-point
    error of every logit difference over the ball of the radius the exact-arithmetic formula gives,
    and the radius is ``min_i (m_i - 2 E) / L_yi`` rounded down (a point is certified at eps only if
    its margin survives the rounding). ``result["rounding"]["lost"]`` counts the points this
    uncertifies at each eps.

    Args:
        model: maps pixels in [0, 1] to logits.
        loader: iterable of ``(x, y)`` batches.
        bound: a :class:`~lipzoo.LipschitzBound` of the model's logits (from
            :func:`lipzoo.lipschitz_bound`; a pairwise one is tightest, per-class and global ones
            are converted soundly). A raw tensor is refused (TypeError).
        eps_list: radii to report, numbers or fraction strings (``"36/255"``).
        allow_estimate: accept a bound with ``guarantee="estimate"``. Then nothing is called
            certified: the accuracies are ``estimated@<eps>`` and ``result["kind"]`` is
            ``"estimated"``.
        attack: None (no attack) or a dict with optional keys ``steps`` (50), ``restarts`` (1),
            ``step_size`` (``2.5 * eps / steps``), ``random_start`` (True), ``seed`` (0),
            ``batch_size`` (points attacked together; default 128 on a CPU, 512 elsewhere),
            ``workers`` (None: the calling thread with torch's threads; an int on a CPU: this many
            threads of one intra-op thread each attack batches side by side, torch's thread count is
            restored afterwards; the verdicts do not depend on it) and ``attack_all`` (False; True
            also attacks the certified points and raises :class:`UnsoundBoundError` if one of them
            is broken under a guaranteed bound).
        device: where to run; default the model's device.
        progress: show a tqdm progress bar.
        arithmetic: the dtype the model is run in when deployed (default: its parameters' dtype);
            ``u`` of the rounding bound. The certificate holds for that arithmetic only.
        accumulate: a wider dtype the kernels accumulate sums in (e.g. ``torch.float32`` for bf16
            GEMMs); default none (the worst case), see :func:`lipzoo.certify.rounding.margin_error_bound`.
        margin_error: None (default: ``E`` computed from the model) or a float, the caller's claim
            ``E`` valid for every point and ball (``0.0`` assumes exact arithmetic: not a certificate
            for the floating-point network).

    Returns:
        Dict with per-sample tensors ``labels``, ``predictions``, ``radii`` (certified radius, 0 if
        misclassified; accounts for rounding), ``radii_exact_arithmetic`` (the same without the rounding
        term), ``margin_errors`` (``E`` per point), ``rounding`` (``dtype``, ``unit_roundoff``,
        ``accumulate``, ``source`` ``"model"`` or ``"given"``, ``lost``: ``{eps_key: points certified
        without the rounding term but not with it}``), ``margins`` (``z_y - max_{i != y} z_i``), ``attack_success`` (``{eps_key:
        bool tensor}``, empty without attack), ``attacked`` (``{eps_key: bool tensor}`` of the points
        PGD ran on), ``kind`` (``"certified"`` or ``"estimated"``), ``guarantee`` (the bound's) and
        ``summary``: ``clean``, ``certified@<eps>`` (or ``estimated@<eps>`` for an estimate),
        ``num_samples`` and, with an attack, ``pgd@<eps>`` and, when the points with radius > eps
        were attacked (an estimate, or ``attack_all``), ``consistency_violations@<eps>`` (points
        with radius > eps yet broken at eps; for a proved bound any nonzero count means the bound is
        unsound). ``<eps>`` is the string as given, or the number formatted with ``:g``.

    Raises:
        TypeError: if ``bound`` is not a :class:`~lipzoo.LipschitzBound`.
        ValueError: on an estimate without ``allow_estimate``, a bound for another number of
            classes, an empty ``eps_list`` or loader, invalid eps or attack settings.
        UnsoundBoundError: with ``attack_all``, when PGD breaks a point a guaranteed bound certifies, or
            (always: such a bound's points are all attacked) a point a probabilistic bound certifies.
    """
    _check_bound_type(bound, allow_estimate)
    kind = radius_kind(bound)
    eps_values = {_eps_key(e): parse_eps(e) for e in eps_list}
    if not eps_values:
        raise ValueError("eps_list must hold at least one radius, e.g. [1.58] or ['36/255'].")
    attack = _check_attack(attack)
    device = torch.device(device) if device is not None else _model_device(model)
    if arithmetic is not None and margin_error is None and arithmetic != _model_dtype(model):
        raise ValueError(f"arithmetic={arithmetic} but the model's parameters are {_model_dtype(model)}: the margins "
                         f"are computed by the model as it is, so cast it first (e.g. model.to({arithmetic})).")
    pairwise_L = None  # checked against the number of classes of the first batch
    queues: dict[str, _AttackQueue] = {}
    attack_all = False
    pool = None
    single_threaded = False
    threads = torch.get_num_threads()
    if attack is not None:
        generator = torch.Generator(device=device).manual_seed(int(attack.pop("seed", 0)))
        attack_all = bool(attack.pop("attack_all", False))
        batch = attack.pop("batch_size", None) or (_CPU_ATTACK_BATCH if device.type == "cpu" else _ATTACK_BATCH)
        workers = attack.pop("workers", None)
        if workers is not None and device.type == "cpu":
            single_threaded = True
            torch.set_num_threads(1)  # one thread per worker: no barriers between the cores (restored below)
            if workers > 1:
                pool = ThreadPoolExecutor(workers, thread_name_prefix="lipzoo-pgd")
        queues = {key: _AttackQueue(model, eps, batch, attack, generator, pool) for key, eps in eps_values.items()}
    # only a proof lets a point skip the attack
    skip_certified = bound.guaranteed and bound.trusted and not attack_all
    dtype = _model_dtype(model)

    labels, predictions, radii, margins, exact_radii, errors = [], [], [], [], [], []
    plan = None
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in tqdm(loader, desc="certify", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device).long()
            x_in = x  # the plan sees the data as given: an input wider than the arithmetic is rounded by it
            if x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)  # the model runs in its own dtype (the arithmetic the radii hold for)
            with torch.inference_mode():
                logits = model(x)
                if pairwise_L is None:  # first batch: the bound must be this model's, for inputs of this shape
                    with torch.inference_mode(False):
                        check_bound_for(bound, model, tuple(x.shape[1:]), where="evaluate",
                                        allow_untrusted=allow_estimate)
                    k = logits.shape[1] if logits.dim() == 2 else None
                    pairwise_L = pairwise_constants(bound, k, allow_estimate=allow_estimate).to(device)
                pred = logits.argmax(dim=1)
                # the exact-arithmetic radius bounds the certified one: E is proved on that ball
                exact_radius = radius_from_tensor(logits, y, pairwise_L)
                if margin_error is None:
                    plan = plan or rounding_plan(model, x.shape[1:], dtype=arithmetic, accumulate=accumulate)
                    error = plan(x_in, exact_radius)
                else:
                    error = torch.full_like(exact_radius, float(margin_error), dtype=torch.float64)
                radius = radius_from_tensor(logits, y, pairwise_L, margin_error=2 * error)
                exact_radii.append(exact_radius.cpu())
                errors.append(error.cpu())
                labels.append(y.cpu())
                predictions.append(pred.cpu())
                radii.append(radius.cpu())
                margins.append((-margin_loss(logits, y)).cpu())
                correct = pred == y
                index = torch.arange(seen, seen + y.numel(), device=device)
                seen += y.numel()
            for key, queue in queues.items():
                todo = correct & (radius <= eps_values[key]) if skip_certified else correct
                queue.add(x[todo], y[todo], index[todo])
        for queue in queues.values():
            queue.flush()
        attack_results = {key: queue.results() for key, queue in queues.items()}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if single_threaded:
            torch.set_num_threads(threads)
        model.train(was_training)

    if not labels:
        raise ValueError("loader yielded no batches; nothing to evaluate.")
    result: dict[str, Any] = {
        "labels": torch.cat(labels),
        "predictions": torch.cat(predictions),
        "radii": torch.cat(radii),
        "margins": torch.cat(margins),
        "radii_exact_arithmetic": torch.cat(exact_radii),
        "margin_errors": torch.cat(errors),
        "attack_success": {},
        "attacked": {},
        "kind": kind,
        "guarantee": bound.guarantee,
    }
    correct = result["predictions"] == result["labels"]
    for key, (index, broken) in attack_results.items():
        success = ~correct
        success[index] = broken
        attacked = torch.zeros_like(correct)
        attacked[index] = True
        result["attack_success"][key], result["attacked"][key] = success, attacked
    summary: dict[str, float | int] = {
        "num_samples": result["labels"].numel(),
        "clean": correct.double().mean().item(),
    }
    unsound = []
    lost: dict[str, int] = {}
    for key, eps in eps_values.items():
        summary[f"{kind}@{key}"] = certified_accuracy(result["radii"], eps)
        lost[key] = int(((result["radii_exact_arithmetic"] > eps) & ~(result["radii"] > eps)).sum())
        if attack is None:
            continue
        broken = result["attack_success"][key]
        summary[f"pgd@{key}"] = (~broken).double().mean().item()
        if skip_certified:  # the certified points were not attacked: nothing to count
            continue
        violations = int(((result["radii"] > eps) & broken).sum())
        summary[f"consistency_violations@{key}"] = violations
        if violations and kind in ("certified", "probabilistic"):
            logger.error("%d points certified at eps=%s were broken by PGD: the bound is unsound.", violations, key)
            unsound.append(f"{violations} at eps={key}")
        elif violations:
            logger.warning("%d points with estimated radius > eps=%s were broken by PGD: the estimate "
                           "under-estimates the Lipschitz constant.", violations, key)
    result["summary"] = summary
    result["rounding"] = {**(plan.describe() if plan is not None else
                             {"dtype": str(arithmetic or _model_dtype(model)).replace("torch.", ""),
                              "unit_roundoff": None, "accumulate": None}),
                          "source": "model" if margin_error is None else "given", "lost": lost}
    if unsound:
        raise UnsoundBoundError(
            f"PGD broke points the {bound.guarantee} bound certifies ({', '.join(unsound)}): the bound is unsound "
            "(too small), so its certified radii are not certificates. Report this with the model and the bound.")
    return result
