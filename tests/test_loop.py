import time

import numpy as np
import pytest

from teleop_app.loop import RateLoop


def test_absolute_deadlines_do_not_drift():
    starts = []
    loop = RateLoop(50, lambda d, s: starts.append((d, s)))
    loop.start()
    time.sleep(1.0)
    loop.stop()
    d = np.array([x[0] for x in starts])
    # Deadlines sit on an exact grid: drift-free by construction.
    assert np.allclose(np.diff(d), 0.02, atol=1e-9)
    lateness = np.array([s - dl for dl, s in starts])
    assert np.median(lateness) < 0.002
    assert 45 <= len(starts) <= 52
    st = loop.stats()
    assert st.ticks == len(starts) and 45 < st.achieved_hz < 55


def test_slow_tick_counts_missed_and_realigns():
    n = [0]

    def tick(d, s):
        n[0] += 1
        if n[0] == 5:
            time.sleep(0.35)   # 3+ periods lost at 10 Hz

    loop = RateLoop(10, tick)
    loop.start()
    time.sleep(1.2)
    loop.stop()
    assert loop.missed >= 2 and loop.overruns >= 1


def test_errors_reported_not_swallowed():
    errs = []
    loop = RateLoop(20, lambda d, s: 1 / 0, on_error=errs.append)
    loop.start()
    time.sleep(0.2)
    loop.stop()
    assert errs and isinstance(errs[0], ZeroDivisionError)


def test_rate_bounds():
    with pytest.raises(ValueError, match="0.5..200 Hz"):
        RateLoop(1000, lambda d, s: None)



def test_reset_stats_starts_counting_afresh():
    n = [0]

    def tick(d, s):
        n[0] += 1
        if n[0] == 3:
            time.sleep(0.25)          # a warm-up hiccup at 20 Hz

    loop = RateLoop(20, tick)
    loop.start()
    time.sleep(0.6)
    assert loop.missed >= 2
    loop.reset_stats(window=10_000)
    time.sleep(0.5)
    loop.stop()
    st = loop.stats()
    assert st.missed <= 1 and 7 <= st.ticks <= 12     # reset: the >= 2 above are gone (<= 1: CI noise)
    assert loop._starts.maxlen == 10_000


def test_loop_owns_the_garbage_collector_while_it_runs_and_gives_it_back():
    import gc
    assert gc.isenabled()
    seen = []
    loop = RateLoop(100, lambda d, s: seen.append(gc.isenabled()))
    loop.start()
    try:
        t_end = time.monotonic() + 5
        junk = []
        while len(seen) < 30 and time.monotonic() < t_end:
            a, b = [], []
            a.append(b)
            b.append(a)                      # cycles only the collector can free
            junk.append(a)
            time.sleep(0.005)
        del junk
        t_end = time.monotonic() + 5
        while sum(loop.gc.collections) == 0 and time.monotonic() < t_end:
            for _ in range(2000):
                a, b = [], []
                a.append(b)
                b.append(a)
            time.sleep(0.01)
    finally:
        loop.stop()
    assert seen and not any(seen), "automatic collection must be off while the loop runs"
    assert sum(loop.gc.collections) > 0, "the loop collects in its slack instead"
    assert gc.isenabled(), "stop() gives automatic collection back"


def test_quiet_delay_keeps_helpers_out_of_the_tick_start():
    loop = RateLoop(20, lambda d, s: None)
    assert loop.quiet_delay() == 0.0                       # not running: never wait
    loop.start()
    try:
        t_end = time.monotonic() + 5
        while loop.ticks < 3 and time.monotonic() < t_end:
            time.sleep(0.01)
        for _ in range(100):                              # a consistent pair: the tick that ran, the next
            start, nxt = loop.last_start, loop.next_deadline
            if nxt is not None and 0.03 < nxt - start < 0.07:
                break
            time.sleep(0.005)
        assert nxt is not None and 0.03 < nxt - start < 0.07
        assert loop.quiet_delay(now=start + 0.0001) == pytest.approx(0.0003)        # the tick just began
        assert loop.quiet_delay(now=nxt - 0.001) == pytest.approx(0.0014)           # about to begin
        assert loop.quiet_delay(now=start + 0.02) == 0.0                            # mid-period
    finally:
        loop.stop()
    assert loop.quiet_delay() == 0.0


def test_a_collection_that_never_finds_room_runs_once_overdue():
    import gc
    from teleop_app.loop import GarbageCollector
    g = GarbageCollector()
    g.owned = True                          # as if a loop owned it (without switching the process's gc off)
    g.OVERDUE_S = 0.05
    was = gc.isenabled()
    gc.disable()
    try:
        junk = [[] for _ in range(gc.get_threshold()[0] + 10)]        # generation 0 is due
        assert gc.get_count()[0] >= gc.get_threshold()[0]
        g.maybe_collect(slack=0.0)          # no room: postponed
        assert g.collections == [0, 0, 0]
        time.sleep(0.06)
        g.maybe_collect(slack=0.0)          # overdue: collected anyway
        assert g.collections[0] == 1 and gc.get_count()[0] < gc.get_threshold()[0]
        del junk
    finally:
        if was:
            gc.enable()
