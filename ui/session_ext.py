"""The few things the GUI needs that teleop_app.session.Session does not offer (yet).

Kept apart so the lead can move them into Session; each function says which Session change would replace it.
Everything here is Qt-free and safe to call from the UI thread (short, under the session lock).
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


def set_workflow_params(session, **params) -> None:
    """Change countdown_s / episode_s / reset_s / target_episodes / auto_keep of the running workflow.

    Wanted in Session: `set_workflow(**params)`.
    """
    import dataclasses
    cfg = session.workflow.config
    types = {f.name: str(f.type) for f in dataclasses.fields(cfg)}
    casts = {"float": float, "int": int, "bool": bool}
    with session._lock:
        for k, v in params.items():
            if k not in types:
                raise AttributeError(f"workflow has no setting {k!r}")
            setattr(cfg, k, casts.get(types[k], lambda x: x)(v))   # by declared type: 0 (int) may become 0.8


def camera_errors(session) -> dict[str, str]:
    """Cameras that failed to connect, with the reason. Wanted in Session: a public `camera_errors`."""
    return dict(getattr(session, "_camera_errors", {}) or {})


class GatedRunner:
    """Wraps a policy runner so the GUI can single-step it and see what it predicted.

    The session calls `act(obs, now)` every tick in POLICY mode. While `budget` is None the policy runs
    freely; with an int budget, each tick consumes one step and, at 0, returns None (the session then holds
    position). `predicted` keeps (now, action) pairs of what the policy asked for, before safety.
    Wanted in Session: `step_policy(n=1)` and the raw policy action in the history.
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
