"""Simulated workcell: 7-joint Panda-like arm + gripper, table, red/blue cubes, bowl, cameras.

Pure NumPy/OpenCV (no physics engine, no GL); the embedded default everything runs against.
"""
from .expert import ScriptedExpert, run_episode
from .kinematics import HOME, JOINT_NAMES, LOWER, MAX_SPEED, UPPER, IKError, fk, ik, jacobian
from .robot import SimCamera, SimRobot
from .workcell import TASKS, Randomization, SimConfig, Workcell, task_from_instruction

__all__ = ["Workcell", "SimConfig", "Randomization", "TASKS", "ScriptedExpert", "SimRobot",
           "SimCamera", "task_from_instruction", "run_episode", "IKError", "fk", "ik", "jacobian",
           "LOWER", "UPPER", "HOME", "MAX_SPEED", "JOINT_NAMES"]
