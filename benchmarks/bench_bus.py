"""Servo-bus cycle time: one sync read (all joints) + one sync write (all goals) for 8 servos,
ServoArm over a real pty against SimServoBus, both protocols, with and without wire-time modelling.

    .venv/bin/python benchmarks/bench_bus.py [--cycles 2000]

Target: median cycle <= 3 ms without wire-time modelling. With wire time the bytes alone cost
(bytes * 10 / baud), printed as the "wire floor" so the overhead on top of physics is visible.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from drivers.bus.arm import Calibration, ServoArm, ServoArmConfig
from drivers.bus.simbus import IdealServos, SimServoBus

NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper"]
IDS = list(range(1, 9))
TARGET_MS = 3.0


def wire_bytes(protocol: str, read_velocity: bool) -> int:
    n = len(IDS)
    if protocol == "dynamixel":
        data = 10 if read_velocity else 4
        return (14 + n) + n * (11 + data) + (14 + n * 5)
    data = 4 if read_velocity else 2
    return (8 + n) + n * (6 + data) + (8 + n * 3)


def run(protocol: str, wire: bool, read_velocity: bool, cycles: int) -> dict:
    backend = IdealServos(8, max_speed=3.0)
    sim = SimServoBus(backend, protocol=protocol, model_wire_time=wire, step_backend=True)
    port = sim.start()
    arm = ServoArm(ServoArmConfig(protocol, port, IDS, NAMES, calibration=Calibration.for_sim(NAMES),
                                  read_velocity=read_velocity))
    arm.connect()
    arm.set_torque(True)
    times = np.empty(cycles)
    try:
        for _ in range(50):      # warm up
            arm.send_action(arm.get_observation().position)
        for k in range(cycles):
            t0 = time.perf_counter()
            obs = arm.get_observation()
            arm.send_action(obs.position + 0.001 * np.sin(k / 50))
            times[k] = time.perf_counter() - t0
    finally:
        arm.disconnect()
        sim.stop()
    ms = times * 1e3
    return {"median": float(np.median(ms)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "floor": wire_bytes(protocol, read_velocity) * 10 / 1_000_000 * 1e3 if wire else 0.0,
            "retries": arm.bus.stats["retries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    args = ap.parse_args()
    print(f"8 servos, 1 Mbps, {args.cycles} cycles of sync-read + sync-write (ServoArm over a pty)")
    print(f"{'protocol':10} {'wire':5} {'read':8} {'median ms':>9} {'p99 ms':>8} {'max ms':>8} "
          f"{'floor ms':>8} {'median/3ms':>10}")
    for protocol in ("dynamixel", "feetech"):
        for wire in (False, True):
            for vel in (True, False):
                r = run(protocol, wire, vel, args.cycles)
                print(f"{protocol:10} {'yes' if wire else 'no':5} {'pos+vel' if vel else 'pos':8} "
                      f"{r['median']:9.3f} {r['p99']:8.3f} {r['max']:8.3f} {r['floor']:8.3f} "
                      f"{r['median'] / TARGET_MS:10.2f}" + (f"  retries={r['retries']}" if r['retries'] else ""))


if __name__ == "__main__":
    main()
