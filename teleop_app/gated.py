"""Single-stepping a policy runner and keeping what it predicted (for the policy tab and scripts)."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class GatedRunner:
    """Wraps a policy runner so the GUI can single-step it and see what it predicted.

    The session calls `act(obs, now)` every tick in POLICY mode. While `budget` is None the policy runs
    freely; with an int budget, each tick consumes one step and, at 0, returns None (the session then holds
    position). `predicted` keeps (now, action) pairs of what the policy asked for, before safety.
    """

    def __init__(self, runner, keep: int = 600):
        self.runner = runner
        self.budget: int | None = None
        self.steps = 0
        self.predicted: deque[tuple[float, np.ndarray]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def __getattr__(self, name):          # meta, chunk info, etc. of the wrapped runner
        return getattr(self.runner, name)

    def run_free(self) -> None:
        with self._lock:
            self.budget = None

    def pause(self) -> None:
        with self._lock:
            self.budget = 0

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.budget = (self.budget or 0) + n

    def reset(self) -> None:
        if hasattr(self.runner, "reset"):
            self.runner.reset()

    def act(self, obs, now):
        with self._lock:
            if self.budget is not None:
                if self.budget <= 0:
                    return None
                self.budget -= 1
        a = self.runner.act(obs, now)
        if a is not None:
            self.steps += 1
            self.predicted.append((now, np.asarray(a, float).copy()))
        return a
