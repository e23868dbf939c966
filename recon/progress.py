"""Progress and cancel of the pupil calibrations' L-BFGS fits (:mod:`.calibration`).

A calibration is a sequence of stages (each an L-BFGS run: the positions alone, then
positions and pupil; a bead stack repeats them per z direction, hard aperture first).
With a ``progress`` callback it is called after every model evaluation with a
:class:`CalibrationProgress`; returning ``False`` (or raising :class:`CalibrationCancelled`)
ends the fit at that evaluation: the calibration raises :class:`CalibrationCancelled`.
Any other exception the callback raises propagates unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

#: L-BFGS iterations per pass of a bead z-stack's calibration (``nvplive calibrate STACK.tif``,
#: the app's "Calibrate pupil"): on the measured stack 30 and 40 iterations leave the same
#: residual (BENCHMARKS.md, "The real bead stack"). Here, torch-free, for the command line's help.
STACK_ITERATIONS = 40
#: Each bead's crop (pixels per side) when a z-stack holds several beads and no crop is given
#: (:func:`.calibration.bead_stack_views`; torch-free here for the command line's help).
BEAD_CROP_PX = 64
#: The most beads of one z-stack fitted together, the brightest that lie alone in their crops.
MAX_BEADS = 3


class CalibrationCancelled(Exception):
    """A pupil calibration was stopped by its ``progress`` callback (no result)."""


@dataclass(frozen=True)
class CalibrationProgress:
    """Where a calibration is, after one model evaluation.

    Attributes:
        stage: what the running L-BFGS stage fits, in words (``positions``, ``all parameters``;
            a bead stack prefixes the z direction and ``hard aperture`` or ``pupil``).
        stage_index: 0-based index of the stage among ``stages``.
        stages: stages of the whole calibration.
        evaluation: model evaluations (loss and gradient) of this stage so far, from 1.
        max_evaluations: this stage's L-BFGS budget of evaluations (it may converge earlier).
        loss: the stage's objective at this evaluation (mean squared residual of the
            images normalised by their mean, ×10³; dimensionless).
    """

    stage: str
    stage_index: int
    stages: int
    evaluation: int
    max_evaluations: int
    loss: float

    @property
    def fraction(self) -> float:
        """Fraction of the whole calibration's evaluation budget used, in [0, 1]
        (a stage that converges early leaves the rest of its budget unused)."""
        within = min(self.evaluation / max(self.max_evaluations, 1), 1.0)
        return (self.stage_index + within) / max(self.stages, 1)

    def describe(self) -> str:
        """One line: stage, evaluation and loss."""
        return (f"{self.stage} (stage {self.stage_index + 1}/{self.stages}): "
                f"evaluation {self.evaluation}/{self.max_evaluations}, loss {self.loss:.4g}")


#: ``progress(report)`` → ``False`` to cancel; None or True to go on.
CalibrationCallback = Callable[[CalibrationProgress], "bool | None"]


def report(progress: CalibrationCallback | None, state: CalibrationProgress) -> None:
    """Call ``progress`` with ``state`` (nothing when None).

    Raises:
        CalibrationCancelled: when ``progress`` returns False (or raises it).
    """
    if progress is not None and progress(state) is False:
        raise CalibrationCancelled(f"Pupil calibration cancelled during {state.stage}.")


def substages(progress: CalibrationCallback | None, label: str, index: int, count: int) -> CalibrationCallback | None:
    """The callback for fit ``index`` of ``count`` sub-fits of a calibration (each of the same
    number of stages): its stages are renumbered into the whole and prefixed with ``label``."""
    if progress is None:
        return None
    outer = progress

    def inner(state: CalibrationProgress) -> bool | None:
        return outer(replace(
            state, stage=f"{label}: {state.stage}", stage_index=index * state.stages + state.stage_index,
            stages=count * state.stages,
        ))

    return inner
