"""Time budgets: a recipe fitted to S seconds of wall clock, decided before the first epoch.

``lipzoo train --time-budget S`` caps the whole run at S seconds (the final save excepted). The
trainer measures a few steps before the first epoch (:class:`StepCosts`: seconds per step with and
without the CRM penalty, seconds of validation and checkpoint per epoch) and :func:`plan_budget`
fits the recipe to what is left:

- the recipe fits: it is trained as it is;
- at least :data:`MIN_EPOCHS` full epochs fit: the recipe is shortened to that many epochs by
  :func:`scale_schedule` -- the cross-entropy warm-up, the constant phase and the decay scaled by
  one factor, the decay starting no earlier than the CRM phase, so CRM starts at the full
  learning rate (a decay fitted *after* some epochs ran, the old behaviour, could leave CRM
  starting at 6e-5);
- fewer fit: :data:`MIN_EPOCHS` epochs of fewer steps each (each a fresh shuffle, so every epoch
  sees a random part of the training split): a schedule of 3 whole epochs would spend the second
  and third at 1/30 and 1/1000 of the learning rate, ten short ones follow the recipe's curve.
  The epochs are fewer when validating ten times would take more than :data:`EVAL_SHARE` of S.

A plan whose CRM phase is shorter than one pass over the training split is *not useful*
(:attr:`BudgetPlan.useful`): the trainer says so before training, with the budget a useful run
needs (:func:`useful_budget`), and trains the plan anyway.

During the run :func:`allot_steps` re-checks after every epoch with the costs measured so far and
shortens the remaining epochs (never lengthens them past the plan) when the rate drops.

Everything here is a pure function of the recipe, the budget and the costs, so it is tested with
made-up costs; the clock stays in the trainer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["StepCosts", "BudgetPlan", "scale_schedule", "fit_recipe", "plan_budget", "allot_steps", "useful_budget",
           "regularized", "MIN_EPOCHS", "EVAL_SHARE"]

#: Fewer whole epochs than this: the plan uses this many shorter epochs (the schedule's phases need stages).
MIN_EPOCHS = 10
#: Short epochs: validation (and the checkpoint) may take at most this share of the budget.
EVAL_SHARE = 0.1


@dataclass(frozen=True)
class StepCosts:
    """Measured seconds: one training step in the CE warm-up and with the CRM penalty, and per epoch the
    validation plus the checkpoint (``overhead``). A ``loss: ce`` recipe uses ``warmup`` for every step."""

    warmup: float
    crm: float
    overhead: float

    def __post_init__(self) -> None:
        for name in ("warmup", "crm", "overhead"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"StepCosts.{name} must be a finite number of seconds >= 0, got {value!r}.")

    def step(self, recipe: dict, epoch: int) -> float:
        """Seconds per step in ``epoch`` (0-based) of ``recipe``."""
        return self.crm if regularized(recipe, epoch) else self.warmup

    def epochs(self, recipe: dict, steps: int, start: int = 0) -> float:
        """Seconds of epochs ``start ..`` of ``recipe`` at ``steps`` steps each, validation included."""
        n = int(recipe["epochs"])
        return sum(steps * self.step(recipe, e) + self.overhead for e in range(start, n))

    def to_dict(self) -> dict[str, float]:
        return {"warmup_step": round(self.warmup, 4), "crm_step": round(self.crm, 4),
                "epoch_overhead": round(self.overhead, 4)}


def regularized(recipe: dict, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) of ``recipe`` trains with the CRM penalty (not the CE warm-up, not ``loss: ce``)."""
    if recipe.get("loss", "crm") != "crm":
        return False
    return epoch >= int((recipe.get("crm") or {}).get("warmup_epochs", 0))


def plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up (Python's round() goes to even)


DEPENDENT = ("scheduler.start_epoch", "crm.warmup_epochs")  # recipe fields counted in epochs


def scale_schedule(recipe: dict, epochs: int, *, keep: tuple[str, ...] = ()) -> dict:
    """A copy of ``recipe`` with ``epochs`` epochs and its epoch-counted fields scaled by ``epochs / recipe epochs``.

    The CE warm-up (``crm.warmup_epochs``, rounded up: a recipe with a warm-up keeps at least one
    epoch of it) and the decay start (``scheduler.start_epoch``, rounded half up) scale together,
    with three more rules: a CRM recipe keeps at least one CRM epoch; when the recipe starts CRM
    at the full learning rate, so does the scaled one (the decay starts no earlier than the CRM
    phase, and one epoch later when the recipe has a constant CRM phase and there is room); and
    the decay starts before the last epoch (the schema's rule). Fields named in ``keep`` (``DEPENDENT`` spellings) stay
    as they are. The result is not checked against the schema here (see :func:`fit_recipe`).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    out = copy.deepcopy(recipe)
    old = int(out["epochs"])
    scale = epochs / old
    out["epochs"] = epochs
    crm = out.get("crm") if out.get("loss", "crm") == "crm" else None
    sched = out.get("scheduler") or {}
    warmup = old_warmup = int(crm.get("warmup_epochs", 0)) if isinstance(crm, dict) else 0
    if isinstance(crm, dict) and "warmup_epochs" in crm and "crm.warmup_epochs" not in keep:
        warmup = math.ceil(old_warmup * scale - 1e-9)  # a recipe with a warm-up keeps one (CRM on an untrained
        if old_warmup < old:  # network collapsed it to one class in 100 MNIST steps); a CRM phase too  # the recipe has a CRM phase: keep one
            warmup = min(warmup, epochs - 1)
        crm["warmup_epochs"] = warmup
    if sched.get("name") == "exponential" and "scheduler.start_epoch" not in keep:
        old_start = int(sched["start_epoch"])
        start = _round(old_start * scale)
        if old_start >= old_warmup:  # the recipe starts CRM at the full rate: so does the scaled one
            start = max(start, warmup)
        if old_start > old_warmup:  # a constant CRM phase: at least one epoch of it where there is room
            start = max(start, warmup + 1)
        sched["start_epoch"] = max(0, min(start, epochs - 1))
    return out


def fit_recipe(recipe: dict, epochs: int) -> dict:
    """``recipe`` shortened to ``epochs`` by :func:`scale_schedule`, checked against the recipe schema.

    The check happens here, so a shortened recipe that breaks the schema fails now, not in
    ``save_pretrained`` at the end of the run; the result loses a shared recipe's ``name`` (a
    shortened shared recipe is not that recipe any more).

    Raises:
        ValueError: ``epochs`` outside ``[1, recipe epochs]``, or a shortened recipe that breaks the schema.
    """
    from lipzoo.meta import Recipe

    old = int(recipe["epochs"])
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= old:
        raise ValueError(f"epochs must be in [1, {old}]; got {epochs!r}.")
    out = scale_schedule(recipe, epochs)
    out.pop("name", None)
    Recipe.parse(out, path=f"recipe (shortened to {epochs} epochs)")
    return out


@dataclass(frozen=True)
class BudgetPlan:
    """What :func:`plan_budget` decided: the recipe to train and the steps of each of its epochs."""

    recipe: dict  # the recipe to train (the input itself when it fits)
    steps_per_epoch: int  # <= full_steps
    full_steps: int  # steps of one pass over the training split
    seconds: float  # predicted seconds of the plan
    budget: float  # the seconds it was fitted to
    recipe_epochs: int  # the input recipe's epochs

    @property
    def fitted(self) -> bool:
        """Whether the recipe or its epochs were shortened."""
        return int(self.recipe["epochs"]) < self.recipe_epochs or self.steps_per_epoch < self.full_steps

    @property
    def crm_steps(self) -> int:
        """Training steps with the CRM penalty."""
        n = int(self.recipe["epochs"])
        return self.steps_per_epoch * sum(regularized(self.recipe, e) for e in range(n))

    @property
    def useful(self) -> bool:
        """A CRM phase of at least one pass over the training split (always true for a ``loss: ce`` recipe)."""
        return self.recipe.get("loss", "crm") != "crm" or self.crm_steps >= self.full_steps

    def describe(self) -> str:
        r = self.recipe
        parts = [plural(int(r["epochs"]), "epoch") + f" of {plural(self.steps_per_epoch, 'step')}"
                 + ("" if self.steps_per_epoch == self.full_steps else f" (of {self.full_steps})")]
        if r.get("loss", "crm") == "crm":
            parts.append(f"CE warm-up {plural(int((r.get('crm') or {}).get('warmup_epochs', 0)), 'epoch')}")
        sched = r.get("scheduler") or {}
        if sched.get("name") == "exponential":
            parts.append(f"decay from epoch {sched['start_epoch']} to {sched['final_lr']:g}")
        return ", ".join(parts) + f", ~{self.seconds:.0f} s"

    def record(self, costs: StepCosts, seconds: float) -> dict[str, Any]:
        """The ``time_budget`` entry of the run's config (and checkpoint), what a resume keeps; ``seconds`` is the
        whole budget (``--time-budget``), of which :attr:`budget` was left for the epochs."""
        return {"seconds": seconds, "recipe_epochs": self.recipe_epochs, "steps_per_epoch": self.steps_per_epoch,
                "full_steps": self.full_steps, "planned_seconds": round(self.seconds, 1), "measured": costs.to_dict()}


def plan_budget(recipe: dict, seconds: float, *, steps_per_epoch: int, costs: StepCosts,
                min_epochs: int = MIN_EPOCHS) -> BudgetPlan:
    """The best plan of ``recipe`` that fits ``seconds`` at ``costs`` (see the module docstring).

    Args:
        recipe: the recipe as a dict (``Recipe.to_dict`` layout).
        seconds: what is left of the budget when the first epoch starts.
        steps_per_epoch: steps of one pass over the training split (``--max-steps`` applied).
        costs: measured costs.
        min_epochs: see :data:`MIN_EPOCHS`.

    Raises:
        ValueError: ``seconds`` not a finite number >= 0, or ``steps_per_epoch`` < 1.
    """
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    old, full = int(recipe["epochs"]), steps_per_epoch

    def plan(r: dict, k: int) -> BudgetPlan:
        return BudgetPlan(r, k, full, costs.epochs(r, k), float(seconds), old)

    if costs.epochs(recipe, full) <= seconds:
        return plan(recipe, full)
    # whole epochs: the most that fit (the cost grows with the epochs)
    whole = 0
    for n in range(old - 1, 0, -1):
        if costs.epochs(scale_schedule(recipe, n), full) <= seconds:
            whole = n
            break
    if whole >= min(min_epochs, old):
        return plan(fit_recipe(recipe, whole), full)
    # shorter epochs: min_epochs stages, fewer when validating would eat more than EVAL_SHARE of the budget
    n = min(min_epochs, old)
    if costs.overhead > 0:
        n = max(1, min(n, int(EVAL_SHARE * seconds // costs.overhead)))
    while True:
        r = scale_schedule(recipe, n)
        per_step = sum(costs.step(r, e) for e in range(n))
        k = int((seconds - n * costs.overhead) // per_step) if per_step > 0 else full
        if k >= 1 or n == 1:
            break
        n -= 1
    return plan(fit_recipe(recipe, n), max(1, min(k, full)))


def useful_budget(recipe: dict, *, steps_per_epoch: int, costs: StepCosts, min_epochs: int = MIN_EPOCHS) -> float:
    """The smallest budget (to 1 %) whose plan is :attr:`BudgetPlan.useful` (the whole recipe's time if none is)."""
    def useful(s: float) -> bool:
        return plan_budget(recipe, s, steps_per_epoch=steps_per_epoch, costs=costs, min_epochs=min_epochs).useful

    high = costs.epochs(recipe, steps_per_epoch)
    low = 0.0
    if not useful(high):
        return high
    while high - low > 0.01 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if useful(mid) else (mid, high)
    return high


def allot_steps(recipe: dict, *, epoch: int, seconds_left: float, planned: int, costs: StepCosts) -> int:
    """Steps for each remaining epoch (``epoch ..``) so that they end within ``seconds_left`` at ``costs``.

    Never more than ``planned`` (a re-check only shortens); 0 when not even one step per remaining
    epoch fits (the trainer then stops).
    """
    n = int(recipe["epochs"])
    if epoch >= n:
        return 0
    per_step = sum(costs.step(recipe, e) for e in range(epoch, n))
    room = seconds_left - (n - epoch) * costs.overhead
    if per_step <= 0:
        return planned if room >= 0 else 0
    return max(0, min(planned, int(room // per_step)))
