"""Gamepad read + mapping cost, and input latency through a real SDL virtual pad.

    SDL_VIDEODRIVER=dummy .venv/bin/python benchmarks/bench_gamepad.py
"""
import os
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np

from drivers.gamepad import Gamepad
from drivers.virtual_gamepad import VirtualGamepad
from teleop_app.mapping import MappingState, default_mapping


def main() -> None:
    gp = Gamepad()
    gp.connect()
    with VirtualGamepad() as pad:
        gp.read()
        ms = MappingState(default_mapping(8))
        max_speed = np.array([1.5] * 4 + [2.0] * 3 + [3.0])
        n = 5000
        t = time.perf_counter()
        for i in range(n):
            pad.set_axis(0, (i % 200) / 100 - 1)
            s = gp.read()
        read_us = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            ms.update(s, max_speed, 7)
        map_us = (time.perf_counter() - t) / n * 1e6
        # set -> visible on the next read (same thread): must be 1 read, never stale
        stale = 0
        for i in range(500):
            v = 0.2 + 0.7 * (i % 2)
            pad.set_axis(0, v)
            if abs(gp.read().axes[0] - (v - 0.1) / 0.9) > 1e-3:
                stale += 1
        print(f"gamepad read(): {read_us:.1f} us/read (incl. set_axis); mapping update: {map_us:.1f} us; "
              f"stale reads after a change: {stale}/500 (want 0)")
    gp.disconnect()


if __name__ == "__main__":
    main()
