"""The tests' one polling helper (imported by the test modules: pytest puts tests/ on sys.path)."""
import time


def wait_for(cond, timeout: float = 10.0, dt: float = 0.01):
    """Poll cond() every dt s until it is truthy (returns its value) or timeout s passed (returns False)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        v = cond()
        if v:
            return v
        time.sleep(dt)
    return False
