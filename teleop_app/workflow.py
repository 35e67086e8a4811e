"""Episode workflow: idle -> countdown -> recording -> review -> resetting -> idle ...

A plain state machine driven by `update(now)` from the control loop and by operator commands
(keys, pad buttons, GUI buttons). It decides *when* to record; the session does the recording.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class State(str, Enum):
    IDLE = "idle"
    COUNTDOWN = "countdown"
    RECORDING = "recording"
    REVIEW = "review"
    RESETTING = "resetting"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


@dataclass
class WorkflowConfig:
    countdown_s: float = 3.0
    episode_s: float = 60.0        # recording stops by itself after this long (0 = no limit)
    reset_s: float = 5.0           # time to put the scene back between episodes
    target_episodes: int = 50
    instructions: list[str] = field(default_factory=lambda: ["pick up the red cube"])
    auto_keep: bool = False        # scripted/policy: keep without waiting for the operator


class Workflow:
    """Emits effects through callbacks the session provides:
    begin_recording(instruction), end_recording(), keep(success), discard()."""

    def __init__(self, config: WorkflowConfig, begin, end, keep, discard):
        self.config = config
        self._begin, self._end, self._keep, self._discard = begin, end, keep, discard
        self.state = State.IDLE
        self.kept = 0
        self.instruction_index = 0
        self.label: int = -1            # success label of the episode under review
        self._t_state = 0.0
        self._now = 0.0
        self.message = ""

    # --- queries ------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        ins = self.config.instructions or [""]
        return ins[self.instruction_index % len(ins)]

    def time_left(self) -> float:
        """Seconds left in the current timed state (countdown, recording limit, reset)."""
        limit = {State.COUNTDOWN: self.config.countdown_s, State.RECORDING: self.config.episode_s,
                 State.RESETTING: self.config.reset_s}.get(self.state, 0.0)
        return max(0.0, limit - (self._now - self._t_state)) if limit else 0.0

    # --- operator commands --------------------------------------------------------------
    def set_instruction(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if text in self.config.instructions:
            self.instruction_index = self.config.instructions.index(text)
        else:
            self.config.instructions.insert(0, text)
            self.instruction_index = 0

    def start(self) -> None:
        if self.state in (State.IDLE, State.RESETTING, State.DONE):
            self._go(State.COUNTDOWN if self.config.countdown_s > 0 else State.RECORDING)

    def stop(self) -> None:
        """Stop recording now and go to review."""
        if self.state == State.RECORDING:
            self.label = -1          # before _end(): it may propose a label (the sim's success test)
            self._end()
            self._go(State.REVIEW)
            if self.config.auto_keep:
                self.keep()
        elif self.state == State.COUNTDOWN:
            self._go(State.IDLE)

    def next(self) -> None:
        """LeRobot's right arrow: end the current phase early."""
        if self.state == State.RECORDING:
            self.stop()
        elif self.state == State.REVIEW:
            self.keep()
        elif self.state == State.RESETTING:
            self._go(State.IDLE)
            self.start()
        elif self.state == State.IDLE:
            self.start()

    def rerecord(self) -> None:
        """LeRobot's left arrow: throw the current/last episode away and record it again."""
        if self.state == State.RECORDING:
            self._end()
            self._discard()
            self._go(State.COUNTDOWN if self.config.countdown_s > 0 else State.RECORDING)
        elif self.state == State.REVIEW:
            self._discard()
            self._go(State.COUNTDOWN if self.config.countdown_s > 0 else State.RECORDING)

    def set_label(self, success: bool) -> None:
        self.label = 1 if success else 0

    def keep(self, success: bool | None = None) -> None:
        if self.state != State.REVIEW:
            return
        if success is not None:
            self.set_label(success)
        self._keep(self.label)
        self.kept += 1
        self.instruction_index += 1
        if self.kept >= self.config.target_episodes:
            self.message = f"target of {self.config.target_episodes} episodes reached"
            self._go(State.DONE)
        else:
            self._go(State.RESETTING if self.config.reset_s > 0 else State.IDLE)

    def discard(self) -> None:
        if self.state == State.REVIEW:
            self._discard()
            self._go(State.RESETTING if self.config.reset_s > 0 else State.IDLE)

    def abort(self) -> None:
        """E-stop or disconnect: end any recording (kept for review, never lost) and stop any
        unattended cycle: nothing starts again by itself."""
        if self.state == State.RECORDING:
            self.stop()
        if self.state in (State.COUNTDOWN, State.RESETTING):
            self._go(State.IDLE)

    # --- clock ----------------------------------------------------------------------------
    def update(self, now: float) -> None:
        self._now = now
        elapsed = now - self._t_state
        if self.state == State.COUNTDOWN and elapsed >= self.config.countdown_s:
            self._go(State.RECORDING)
        elif self.state == State.RECORDING and self.config.episode_s and elapsed >= self.config.episode_s:
            self.stop()
        elif self.state == State.RESETTING and elapsed >= self.config.reset_s:
            self._go(State.IDLE)
            if self.config.auto_keep:
                self.start()

    def _go(self, state: State) -> None:
        self.state = state
        self._t_state = self._now
        if state == State.RECORDING:
            self._begin(self.instruction)
