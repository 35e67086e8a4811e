from teleop_app.workflow import State, Workflow, WorkflowConfig


def make(**kw):
    log = []
    cfg = WorkflowConfig(countdown_s=1.0, episode_s=10.0, reset_s=2.0, target_episodes=2,
                         instructions=["a", "b"], **kw)
    wf = Workflow(cfg, begin=lambda ins: log.append(("begin", ins)), end=lambda: log.append(("end",)),
                  keep=lambda s: log.append(("keep", s)), discard=lambda: log.append(("discard",)))
    return wf, log


def test_full_cycle_with_timers_and_target():
    wf, log = make()
    wf.update(0.0)
    wf.start()
    assert wf.state == State.COUNTDOWN and wf.time_left() == 1.0
    wf.update(0.5)
    assert wf.state == State.COUNTDOWN
    wf.update(1.0)
    assert wf.state == State.RECORDING and log[-1] == ("begin", "a")
    wf.update(11.0)                         # episode time limit
    assert wf.state == State.REVIEW and log[-1] == ("end",)
    wf.keep(success=True)
    assert log[-1] == ("keep", 1) and wf.state == State.RESETTING
    wf.update(13.0)
    assert wf.state == State.IDLE and wf.instruction == "b"
    wf.next()                               # -> starts countdown
    wf.update(14.0)
    wf.next()                               # stop recording early
    wf.next()                               # keep (unlabelled)
    assert log[-1] == ("keep", -1) and wf.state == State.DONE and "target" in wf.message


def test_rerecord_discards_and_restarts():
    wf, log = make()
    wf.start()
    wf.update(1.0)
    wf.rerecord()
    assert ("discard",) in log and wf.state == State.COUNTDOWN
    wf.update(2.0)
    assert wf.state == State.RECORDING
    wf.stop()
    wf.rerecord()
    assert log.count(("discard",)) == 2


def test_abort_keeps_recording_for_review():
    wf, log = make()
    wf.start()
    wf.update(1.0)
    wf.abort()
    assert wf.state == State.REVIEW and ("discard",) not in log


def test_instruction_history():
    wf, _ = make()
    wf.set_instruction("new one ")
    assert wf.instruction == "new one" and wf.config.instructions[0] == "new one"
    wf.set_instruction("b")
    assert wf.instruction == "b"


def test_abort_stops_unattended_cycle():
    wf, log = make(auto_keep=True)
    wf.start()
    wf.update(1.0)
    wf.abort()
    assert ("keep", -1) in log and wf.state == State.IDLE
    wf.update(100.0)
    assert wf.state == State.IDLE                      # nothing restarts by itself after an e-stop
