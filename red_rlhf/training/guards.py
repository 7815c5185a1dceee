"""Stop a run at the first non-finite reward, loss or gradient, naming the step and the phase.

A NaN that reaches an optimiser step makes every weight NaN, and the next checkpoint saves them. The checks run
before each optimiser step and before the step's checkpoint, so the last checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A reward, loss or gradient that is NaN or infinite; the message names the step and the phase."""


STOPPED = "the run stopped before this optimiser step and before a checkpoint; the last checkpoint is intact"


def ensure_finite(step: int, phase: str, **tensors: torch.Tensor | None) -> None:
    """Raise NonFiniteError naming the step, the phase, the tensor and its first bad rows."""
    for name, value in tensors.items():
        if value is None:
            continue
        bad = ~torch.isfinite(value.detach())
        if bad.any():
            rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist() if bad.dim() else []
            where = f" in row(s) {rows[:8]}" if rows else ""
            raise NonFiniteError(f"step {step}, phase {phase}: {name} is NaN or infinite{where}; {STOPPED}. "
                                 "Check the reward source, reward.score_* and kl settings, and the learning rates")
