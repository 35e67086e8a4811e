"""Build robot, cameras and gamepad from a profile and a robot kind (sim / sim-serial / real)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivers.interfaces import Camera, DeviceError, Robot
from teleop_app.profiles import RobotProfile

ROBOT_KINDS = ("sim", "sim-serial", "real")


@dataclass
class Devices:
    robot: Robot
    cameras: dict[str, Camera]
    workcell: object | None = None     # the sim world when there is one (tasks, success, reset)
    simbus: object | None = None       # the pty-served bus for sim-serial
    closers: list = field(default_factory=list)

    def close(self) -> None:
        for cam in self.cameras.values():
            try:
                cam.disconnect()
            except Exception:
                pass
        try:
            if self.robot.is_connected:
                self.robot.disconnect()
        except Exception:
            pass
        for c in self.closers:
            try:
                c()
            except Exception:
                pass


def sim_physics(physics: bool | None = None) -> bool:
    """Whether a sim built with `physics` (None: drivers.sim's default, SimConfig.physics) is MuJoCo."""
    if physics is None:
        from drivers.sim import SimConfig
        return bool(SimConfig.physics)
    return bool(physics)


def make_workcell(profile: RobotProfile, seed: int = 0, task: str = "pick_red", randomize: bool = False,
                  physics: bool | None = None):
    """The sim world; physics=True: MuJoCo contact physics, False: the kinematic fast mode,
    None: drivers.sim's default (SimConfig.physics: physics)."""
    from drivers.sim import Randomization, SimConfig, Workcell
    if profile.dof != 8:
        raise DeviceError(f"profile '{profile.name}' has {profile.dof} joints; the simulated workcell is a "
                          "7-joint arm + gripper: use --profile sim7 with --robot sim/sim-serial")
    cam = profile.cameras[0] if profile.cameras else None
    r = Randomization(light=randomize, colors=randomize, camera_jitter=randomize, noise=randomize)
    return Workcell(SimConfig(seed=seed, task=task, width=cam.width if cam else 224,
                              height=cam.height if cam else 224, randomization=r, physics=sim_physics(physics)))


def make_devices(profile: RobotProfile, kind: str = "sim", port: str | None = None, period: float = 0.1,
                 seed: int = 0, task: str = "pick_red", realtime: bool = True,
                 cameras: list[str] | None = None, protocol: str = "dynamixel",
                 calibration: str | None = None, randomize: bool = False,
                 physics: bool | None = None) -> Devices:
    """Connect nothing yet: returns the objects; call robot.connect() / cam.connect()."""
    if kind not in ROBOT_KINDS:
        raise DeviceError(f"unknown robot kind '{kind}': use one of {', '.join(ROBOT_KINDS)}")
    wanted = [c for c in profile.cameras if cameras is None or c.name in cameras]
    if cameras:
        missing = set(cameras) - {c.name for c in profile.cameras}
        if missing:
            raise DeviceError(f"camera(s) {sorted(missing)} not in profile '{profile.name}' "
                              f"(it has {[c.name for c in profile.cameras]})")
    dev: Devices
    if kind == "sim":
        from drivers.sim import SimRobot
        wc = make_workcell(profile, seed, task, randomize, physics)
        dev = Devices(robot=SimRobot(wc, period=period, realtime=realtime), cameras={}, workcell=wc)
    elif kind == "sim-serial":
        from drivers.bus.arm import Calibration, ServoArm, ServoArmConfig
        from drivers.bus.simbus import SimServoBus
        wc = make_workcell(profile, seed, task, randomize, physics)
        ids = [j.servo_id if j.servo_id is not None else i + 1 for i, j in enumerate(profile.all_joints)]
        bus = SimServoBus(wc, protocol=protocol, ids=ids, baud=profile.bus.baud, step_backend=True)
        path = bus.start()
        arm = ServoArm(ServoArmConfig(protocol=protocol, port=path, baud=profile.bus.baud, ids=ids,
                                      joint_names=profile.joint_names,
                                      calibration=Calibration.for_sim(profile.joint_names),
                                      # The simulated servos answer from a Python thread in this process
                                      # that competes for the GIL with the sim and the recorder (stalls
                                      # of 25+ ms seen at episode start): allow it more time than a
                                      # real bus, whose replies take < 2 ms.
                                      timeout_s=0.1, min_timeout_s=0.04))
        dev = Devices(robot=arm, cameras={}, workcell=wc, simbus=bus, closers=[bus.stop])
    else:
        from drivers.bus.arm import ServoArm, ServoArmConfig
        if profile.bus.kind == "sim":
            raise DeviceError(f"profile '{profile.name}' describes a simulated arm: use --robot sim, "
                              "or pick a hardware profile (koch, so101) for --robot real")
        ids = [j.servo_id for j in profile.all_joints]
        dev = Devices(robot=ServoArm(ServoArmConfig(
            protocol=profile.bus.kind, port=port or profile.bus.port, baud=profile.bus.baud, ids=ids,
            joint_names=profile.joint_names, calibration=calibration)), cameras={})
    for spec in wanted:
        dev.cameras[spec.name] = make_camera(spec, dev.workcell, realtime)
    return dev


def make_camera(spec, workcell=None, realtime: bool = True) -> Camera:
    if spec.kind == "sim":
        if workcell is None:
            raise DeviceError(f"camera '{spec.name}' is a sim camera but the robot is not simulated")
        from drivers.sim import SimCamera
        return SimCamera(workcell, name=spec.name, view=spec.view, width=spec.width, height=spec.height,
                         fps=spec.fps, realtime=realtime)
    from drivers.camera import camera_from_spec
    return camera_from_spec(spec)


def fk_for(dev: Devices):
    """Forward kinematics for workspace limits where the arm model is known (the sim arm)."""
    if dev.workcell is not None:
        from drivers.sim.kinematics import fk
        return lambda q: fk(np.asarray(q)[:7])
    return None
