"""Which optimizer steps get exact tensor accounting (pure logic, no torch)."""

from __future__ import annotations

import math


class SamplingSchedule:
    """Chooses the steps measured exactly.

    ``exact`` measures every step and ``off`` none. ``sampled`` measures the first ``first_steps`` steps
    (where most peaks are) and then every ``sample_every``-th step at most, spacing windows further apart
    when one measured step (plus its census) costs more than ``budget`` of the plain steps between windows.
    A window is opened at the end of the step before the one it measures.
    """

    def __init__(self, mode: str, first_steps: int, sample_every: int, budget: float = 0.01) -> None:
        self.mode = mode
        self.first_steps = first_steps
        self.sample_every = sample_every
        self.budget = budget
        self._plain_time: float | None = None
        self._next = first_steps + sample_every

    def detailed(self, step: int) -> bool:
        """Whether the span ending with optimizer step ``step`` (1-based) is measured exactly."""
        if self.mode == "exact":
            return True
        if self.mode == "off":
            return False
        return step <= self.first_steps or step == self._next

    def record(self, step: int, seconds: float, detailed: bool, census_seconds: float = 0.0) -> None:
        """Learn from a finished step how long plain and measured steps take."""
        if self.mode != "sampled" or step <= self.first_steps and detailed:
            return
        if not detailed:
            self._plain_time = seconds if self._plain_time is None else 0.8 * self._plain_time + 0.2 * seconds
            return
        if step != self._next:
            return
        gap = self.sample_every
        if self._plain_time:
            extra = max(0.0, seconds - self._plain_time) + census_seconds
            gap = max(gap, math.ceil(extra / (self.budget * self._plain_time)))
        self._next = step + gap
