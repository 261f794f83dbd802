"""The restore point a (re)starting trainer gang agrees on with the controller, before any weights are loaded."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
MAX_ROUNDS = 32
"""Each round ends or lowers the step, so the rounds are bounded by the checkpoints kept; this is a safety net."""


class ResumeMismatch(RuntimeError):
    """The controller named a restore point the gang cannot reach (a bug, never a normal restart)."""


def agree_resume_step(
    newest: Callable[[int | None], int],
    register: Callable[[int], int],
    gang_min: Callable[[int], int] = lambda step: step,
) -> int:
    """The step at which every rank, the controller and the checkpoint to load agree.

    `newest(max_step)` is this rank's newest good checkpoint at or below `max_step` (0: none, i.e. the initial
    weights); `register(step)` tells the controller the gang can resume at `step` and returns the step it must
    resume from (never later: the controller rewinds itself, to its own checkpoint or to step 0, when it cannot
    replay the batches since `step`); `gang_min(step)` is the minimum over the ranks (an all-reduce; identity for
    one rank). Every rank calls this together. A gang without checkpoints (an emptyDir lost with its pods) thus
    starts over from step 0 with the controller, instead of training step N from the initial weights.

    Raises ResumeMismatch when the controller answers a later step than offered or the rounds do not settle.
    """
    step = gang_min(newest(None))
    for _ in range(MAX_ROUNDS):
        answer = register(step)
        if answer > step:
            raise ResumeMismatch(f"the controller asked to resume at step {answer}, but the gang has step {step}")
        reachable = gang_min(newest(answer))
        if reachable == answer == step:
            return step
        if reachable != answer:
            log.warning("no trainer checkpoint of step %d; offering step %d", answer, reachable)
        step = reachable
    raise ResumeMismatch(f"no restore point agreed with the controller after {MAX_ROUNDS} rounds")
