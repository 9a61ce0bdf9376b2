"""``--time-budget`` during a run: :class:`RunBudget` holds the clock of :mod:`lipzoo.train.budget`'s arithmetic.

The trainer (:func:`lipzoo.train.trainer.train`) builds one before the first epoch and passes its own
clock (``lipzoo.train.trainer._now``, which tests replace), so the budget and the loop read one clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from lipzoo.train.budget import StepCosts, allot_steps, plan_budget, plural, regularized, scale_schedule, useful_budget

if TYPE_CHECKING:
    from lipzoo.train.trainer import _Run

logger = logging.getLogger(__name__)

__all__ = ["RunBudget"]


class RunBudget:
    """``--time-budget``: the plan before the first epoch, the steps of every epoch, the costs measured so far.

    The arithmetic is :mod:`lipzoo.train.budget`'s (pure, tested with made-up costs); this class holds the
    clock. The cap covers the whole run, earlier sessions included (their seconds are in the checkpoint),
    and excepts the final save.
    """

    MARGIN = 0.02  # of the budget, kept free for the noise of a shared machine

    def __init__(self, run: _Run, seconds: float, session: float, now: Callable[[], float]):
        self.run, self.seconds, self.now = run, float(seconds), now
        self.deadline = session + self.seconds - run.seconds  # a now() time
        self.costs = self.measured = run.agree(run.measure_costs())
        self.seen: dict[str, list[float]] = {"warmup": [], "crm": [], "overhead": []}
        self.last_steps: int | None = None
        if run.epoch == 0 and "time_budget" not in run.config:
            self.plan()
        elif "time_budget" not in run.config:
            logger.warning("time budget %g s: this run started without one, so its recipe stays as it is; the budget "
                           "shortens the steps of its remaining epochs (or stops it).", self.seconds)
        else:
            logger.info("time budget %g s: %.0f s left for the planned recipe (%s epochs of %d steps).", self.seconds,
                        self.left(), run.recipe["epochs"], run.planned_steps)

    def left(self) -> float:
        return self.deadline - self.now()

    def plan(self) -> None:
        """Fit the recipe to what is left, before the first epoch, and say what it did."""
        run, costs = self.run, self.costs
        left = max(0.0, self.left() - self.MARGIN * self.seconds)
        one = costs.epochs(scale_schedule(run.recipe, 1), 1)  # the least a run can be: one step, one validation
        if left < one:
            raise ValueError(f"--time-budget {self.seconds:g}: {self.seconds - self.left():.0f} s went to loading and "
                             f"measuring, and what is left ({max(0.0, self.left()):.0f} s) cannot hold one step and one "
                             f"validation (~{one:.0f} s); nothing was trained. A useful run of this recipe needs about "
                             f"--time-budget {self._useful():.0f}.")
        plan = run.agree(plan_budget(run.recipe, left, steps_per_epoch=run.full_steps, costs=costs))
        rates = (f"measured {costs.crm:.2f} s per CRM step, {costs.warmup:.2f} s per CE step, {costs.overhead:.1f} s of "
                 "validation and checkpoint per epoch")
        if not plan.fitted:
            logger.info("time budget %g s: the recipe fits (~%.0f s; %s).", self.seconds, plan.seconds, rates)
            run.config = dict(run.config, time_budget=plan.record(costs, self.seconds))  # what a resume keeps
            return
        full = costs.epochs(run.recipe, run.full_steps)
        logger.warning("time budget %g s (%.0f s left to train): the recipe's %s epochs of %d steps need ~%.0f s (%s); "
                       "fitted: %s.", self.seconds, left, run.recipe["epochs"], run.full_steps, full, rates,
                       plan.describe())
        if not plan.useful:
            logger.warning("time budget %g s: it holds %d CRM steps, less than one pass over the training split (%d "
                           "steps); the model will certify little. A useful CRM phase needs about --time-budget %.0f. "
                           "Training the schedule that fits.", self.seconds, plan.crm_steps, run.full_steps,
                           self._useful())
        run.apply_plan(plan, costs)

    def _useful(self) -> float:
        """The budget a useful plan needs, setup and margin included."""
        run = self.run
        setup = self.seconds - self.left()
        need = useful_budget(run.recipe, steps_per_epoch=run.full_steps, costs=self.costs) + setup
        return need / (1 - self.MARGIN)

    def allot(self) -> tuple[int, float | None]:
        """Steps of the next epoch (0: stop) and the time after which no step starts."""
        run = self.run
        steps = run.agree(allot_steps(run.recipe, epoch=run.epoch, seconds_left=self.left(), planned=run.planned_steps,
                                      costs=self.costs))
        if steps == 0:
            logger.warning("time budget %g s: %.0f s left cannot hold a step and a validation in each of the %d "
                           "remaining epochs; stopping after epoch %d of %s.", self.seconds, self.left(),
                           int(run.recipe["epochs"]) - run.epoch, run.epoch, run.recipe["epochs"])
            run.config["time_budget"] = {**run.config.get("time_budget", {}), "stopped_after_epoch": run.epoch}
        elif steps < run.planned_steps and steps != self.last_steps:
            logger.warning("time budget %g s: %.0f s left; at the rates measured so far (%.2f s per step, %.1f s of "
                           "validation per epoch) the remaining %s get %d steps each (planned %d).",
                           self.seconds, self.left(), self.costs.step(run.recipe, run.epoch), self.costs.overhead,
                           plural(int(run.recipe["epochs"]) - run.epoch, "epoch"), steps, run.planned_steps)
        self.last_steps = steps
        # no step starts that would leave too little for the epoch's validation and checkpoint; ranks cannot
        # each stop on their own clock (they would wait for each other), so DDP relies on the allotment
        stop_at = self.deadline - 1.25 * self.costs.overhead if run.world == 1 else None
        return steps, stop_at

    def observe(self, epoch: int, steps: int, train_seconds: float, epoch_seconds: float) -> None:
        """Costs from the epoch just trained (the mean of the last three per kind): a slower machine shortens the rest."""
        mode = "crm" if regularized(self.run.recipe, epoch) else "warmup"
        if steps:
            self.seen[mode].append(train_seconds / steps)
        self.seen["overhead"].append(max(0.0, epoch_seconds - train_seconds))
        mean = {k: sum(v[-3:]) / len(v[-3:]) for k, v in self.seen.items() if v}
        measured = self.measured
        # a kind of step not seen yet is as much slower than measured as the kind seen (the machine's load)
        seen = [k for k in ("warmup", "crm") if k in mean and getattr(measured, k) > 0]
        load = mean[seen[-1]] / getattr(measured, seen[-1]) if seen else 1.0
        self.costs = self.run.agree(StepCosts(warmup=mean.get("warmup", measured.warmup * load),
                                              crm=mean.get("crm", measured.crm * load),
                                              overhead=mean.get("overhead", measured.overhead)))
