"""The parts of the optimisation loop, each a small policy tested on its own.

:class:`~nvplive.recon.reconstructor.Reconstructor` runs the loop; the decisions it makes
along the way live here (docs/reconstruction.md, "Cold start, warm start, stopping"):

- the warm-update budget, a type: :class:`IterationBudget` or :class:`LatencyBudget`,
  and the :class:`StopPolicy` an update follows (iterations, host checks, plateau, time);
- :class:`PlateauDetector` and :func:`time_is_up`: when an update ends early;
- :class:`DivergenceGuard`: a diverging update rolls back to its last good state;
- :class:`RefineSchedule`: when a coarse-to-fine representation moves one level finer;
- :class:`LearningRateDecay`: how a cold start's learning rate falls over its last iterations,
  and :func:`adam_after_refinement`: the optimiser a refinement leaves;
- :class:`CoherenceCache`: how long the coherence weights are reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: Iteration cap of a warm update under a :class:`LatencyBudget` (its time ends it first).
LATENCY_ITERATION_CAP = 100_000
#: Iterations after which the coherence weights are recomputed (at the next progress check;
#: under a time budget, at the start of the next update).
COHERENCE_REFRESH_ITERATIONS = 50
#: Fraction of a cold start's iterations within which a coarse-to-fine representation
#: reaches its finest level (the levels are spread evenly over it).
REFINE_WITHIN = 0.6


@dataclass(frozen=True)
class IterationBudget:
    """A warm update of at most ``iterations`` iterations, ended early by a loss plateau
    when ``stop_on_plateau`` (the host checks the loss every ``ReconConfig.check_every``)."""

    iterations: int = 40
    stop_on_plateau: bool = True

    @property
    def label(self) -> str:
        """As the app shows it: ``40 it``."""
        return f"{self.iterations} it"

    @property
    def target_latency_s(self) -> float | None:
        """The latency an update aims at: none."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``kind: iterations``."""
        return {"kind": "iterations", "iterations": self.iterations, "stop_on_plateau": self.stop_on_plateau}


@dataclass(frozen=True)
class LatencyBudget:
    """A warm update that ends when its next iteration would not finish (with the result's
    decoding and copy) within ``seconds`` of wall time: the app's live mode.

    A plateau does not end it (the time does). The host checks the loss every
    ``check_every`` iterations (1: the progress shown follows every iteration); at most
    ``max_iterations`` run.
    """

    seconds: float = 1.0
    check_every: int = 1
    max_iterations: int = LATENCY_ITERATION_CAP

    @property
    def label(self) -> str:
        """As the app shows it: ``1.00 s``."""
        return f"{self.seconds:.2f} s"

    @property
    def target_latency_s(self) -> float | None:
        """The latency an update aims at: ``seconds``."""
        return self.seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``kind: latency``."""
        return {"kind": "latency", "seconds": self.seconds, "check_every": self.check_every, "max_iterations": self.max_iterations}


#: The budget of a warm update.
WarmBudget = IterationBudget | LatencyBudget


def warm_budget_from_dict(data: dict[str, Any]) -> WarmBudget:
    """The budget a ``to_dict()`` describes (``kind`` ``iterations`` or ``latency``).

    Raises:
        ValueError: an unknown kind.
    """
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind == "iterations":
        return IterationBudget(**fields)
    if kind == "latency":
        return LatencyBudget(**fields)
    raise ValueError(f"Unknown warm budget kind {kind!r}; expected 'iterations' or 'latency'.")


@dataclass(frozen=True)
class StopPolicy:
    """How one update (cold start or warm update) stops.

    Attributes:
        iterations: the most iterations it runs.
        check_every: iterations between host checks (loss window, divergence, progress, plateau).
        stop_on_plateau: end at a loss plateau.
        seconds: wall-time budget (s), or None.
    """

    iterations: int
    check_every: int
    stop_on_plateau: bool = False
    seconds: float | None = None

    @classmethod
    def cold(cls, iterations: int, check_every: int) -> StopPolicy:
        """A cold start: its iterations, checked every ``check_every``; no plateau stop, no clock."""
        return cls(iterations, check_every)

    @classmethod
    def warm(cls, budget: WarmBudget, check_every: int) -> StopPolicy:
        """A warm update under ``budget`` (``check_every``: the config's, used by an iteration budget)."""
        if isinstance(budget, LatencyBudget):
            return cls(budget.max_iterations, budget.check_every, stop_on_plateau=False, seconds=budget.seconds)
        return cls(budget.iterations, check_every, stop_on_plateau=budget.stop_on_plateau)

    def checks_at(self, iteration: int) -> bool:
        """Whether the host checks after ``iteration`` (every ``check_every`` and at the last)."""
        return iteration % self.check_every == 0 or iteration == self.iterations


@dataclass
class PlateauDetector:
    """The loss has plateaued when a check's mean loss improves on the previous check's by
    less than ``rel_tol`` of it (the first check after a reset never is a plateau)."""

    rel_tol: float
    last: float = math.inf

    def update(self, current: float) -> bool:
        """Record a check's mean loss; whether it is a plateau."""
        plateau = self.last - current < self.rel_tol * abs(self.last)
        self.last = current
        return plateau

    def reset(self) -> None:
        """Forget the previous check (after a refinement the loss jumps)."""
        self.last = math.inf


def time_is_up(spent_s: float, iterations: int, seconds_per_iteration: float | None, finish_s: float, budget_s: float) -> bool:
    """Whether one more iteration would overrun ``budget_s``.

    The next iteration takes as long as the previous update's (``seconds_per_iteration``)
    or this update's so far (``spent_s / iterations``), whichever is slower (a loaded
    machine), and the result then takes ``finish_s`` to decode and copy, as last time.
    """
    per_iteration = max(seconds_per_iteration or 0.0, spent_s / max(iterations, 1))
    return spent_s + per_iteration + finish_s > budget_s


class DivergenceGuard:
    """Detects a diverging update and restores its last good state.

    A check's loss window diverged when its mean is not finite or exceeds ``factor`` ×
    the update's first finite loss. :meth:`keep` remembers the representation's and the
    calibration's values at a good check; :meth:`roll_back` restores them.
    """

    def __init__(self, factor: float, representation: nn.Module, calibration: Sequence[torch.Tensor]) -> None:
        self.factor = factor
        self.reference: float | None = None
        self.representation = representation
        self.calibration = list(calibration)
        self.keep()

    def diverged(self, window: Sequence[float]) -> bool:
        """Whether the loss ``window`` of a check diverged (its first finite loss is the reference)."""
        if self.reference is None and window and math.isfinite(window[0]):
            self.reference = abs(window[0])
        current = float(np.mean(window))
        limit = self.factor * self.reference if self.reference is not None else math.inf
        return not math.isfinite(current) or current > limit

    def keep(self, calibration_too: bool = True) -> None:
        """Remember the current values as the last good state (``calibration_too=False``: the
        representation's only, after a refinement changed its shapes)."""
        self._good = {k: v.detach().clone() for k, v in self.representation.state_dict().items()}
        if calibration_too:
            self._good_calibration = [p.detach().clone() for p in self.calibration]

    def roll_back(self) -> None:
        """Restore the last good state."""
        self.representation.load_state_dict(self._good)
        with torch.no_grad():
            for p, good in zip(self.calibration, self._good_calibration):
                p.copy_(good)


class RefineSchedule:
    """When a coarse-to-fine representation with ``levels`` levels moves one level finer.

    A cold start of ``iterations`` refines at evenly spaced iterations within its first
    :data:`REFINE_WITHIN`, or earlier at a loss plateau there; a warm update never refines.
    """

    def __init__(self, iterations: int, levels: int, warm: bool) -> None:
        self.iterations = iterations
        self.levels = levels
        self.warm = warm
        self.at = [] if warm else [int(iterations * f) for f in np.linspace(0, REFINE_WITHIN, levels)[1:]]

    def scheduled(self, iteration: int) -> bool:
        """Whether a refinement is scheduled after ``iteration`` (the host checks there)."""
        return iteration in self.at

    def due(self, iteration: int, plateau: bool) -> bool:
        """Whether to refine at this check: scheduled, or a cold start's plateau early enough."""
        early_plateau = plateau and not self.warm and self.levels > 1 and iteration < REFINE_WITHIN * self.iterations
        return self.scheduled(iteration) or early_plateau

    def refined(self, iteration: int) -> None:
        """A refinement happened at ``iteration``: drop the scheduled ones up to it."""
        self.at = [r for r in self.at if r > iteration]


@dataclass
class LearningRateDecay:
    """The factor on a cold start's representation learning rates at each iteration.

    From the later of :data:`REFINE_WITHIN` × ``iterations`` and the last refinement
    (:meth:`refined`), the rates fall geometrically, to ``fraction`` of themselves at the
    last iteration. Before that, and in a warm update, the factor is 1; ``fraction`` 1 turns
    the decay off. Without it, the fit goes on lowering the loss on noisy frames by moving Δn
    along directions the few views barely see, and a cold start ends about 2 dB below its
    peak (BENCHMARKS.md, "A cold start that decays its learning rate").
    """

    iterations: int
    fraction: float
    warm: bool = False

    def __post_init__(self) -> None:
        self.start = int(self.iterations * REFINE_WITHIN)

    def refined(self, iteration: int) -> None:
        """The representation moved one level finer at ``iteration``: the decay starts there at the earliest."""
        self.start = max(self.start, iteration)

    def factor(self, iteration: int) -> float:
        """The factor on the rates at ``iteration`` (1-based), in (0, 1]."""
        if self.warm or self.fraction == 1.0 or iteration <= self.start:
            return 1.0
        return self.fraction ** ((iteration - self.start) / max(self.iterations - self.start, 1))


def adam_after_refinement(previous: torch.optim.Optimizer, groups: list[dict]) -> torch.optim.Adam:
    """A new Adam over ``groups`` after a refinement replaced some parameters (the finer
    grid): the parameters that stayed (feature planes, decoder) keep their moment estimates,
    where fresh ones would take full-size first steps in every parameter and throw the fit
    back (BENCHMARKS.md, "A cold start that decays its learning rate")."""
    optimizer = torch.optim.Adam(groups)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter in previous.state:
                optimizer.state[parameter] = previous.state[parameter]
    return optimizer


#: Iterations whose mean loss is the loss a fit ended at (:func:`settled_loss`).
SETTLED_ITERATIONS = 10


def settled_loss(losses: Sequence[float], window: int = SETTLED_ITERATIONS, flagged: bool = False) -> float:
    """The loss a fit ended at: the mean of its last ``window`` iterations' losses (one
    iteration's loss jitters with the calibration's and the representation's steps); ``inf``
    for a fit without losses or ``flagged`` as diverged, so that any settled fit beats it.
    :meth:`.reconstructor.Reconstructor.cold_start` keeps the depth start with the lowest."""
    if flagged or not losses:
        return math.inf
    return float(np.mean(losses[-max(1, window):]))


class CoherenceCache:
    """The coherence weights of the current estimate, reused until they are
    ``refresh_iterations`` old (they age in iterations, whatever the check interval)."""

    def __init__(self, refresh_iterations: int = COHERENCE_REFRESH_ITERATIONS) -> None:
        self.refresh_iterations = refresh_iterations
        self.weights: torch.Tensor | None = None
        self.age: int | None = None  # None: none computed for the current estimate

    @property
    def stale(self) -> bool:
        """Whether the weights must be recomputed."""
        return self.age is None or self.age >= self.refresh_iterations

    def get(self, compute: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """The weights, recomputed by ``compute()`` when stale."""
        if self.stale:
            self.weights = compute()
            self.age = 0
        return self.weights

    def tick(self) -> None:
        """One iteration passed."""
        if self.age is not None:
            self.age += 1

    def invalidate(self) -> None:
        """A new estimate: recompute at the next :meth:`get`."""
        self.age = None
