"""Simulated workcell: 7-joint Panda-like arm + parallel gripper, table, objects, bowl, cameras.

Two backends behind one Workcell interface:
  SimConfig(physics=True)   the default: MuJoCo contact physics (physics.py): friction grasps that
                            can slip, pushed/tipping/falling objects; servo-like position actuators
  SimConfig(physics=False)  kinematic fast mode (pure NumPy: a cube moves only when "grasped"; the
                            arm follows its goal within a tick)
Both render with the NumPy/OpenCV renderer (no GL). objects.py holds the object catalogue,
tasks.py the task kinds, instruction phrasings and the held-out splits (episodes()).
"""
from .expert import ScriptedExpert, run_episode
from .kinematics import HOME, JOINT_NAMES, LOWER, MAX_SPEED, UPPER, IKError, fk, ik, jacobian
from .objects import ObjectSpec
from .robot import SimCamera, SimRobot
from .tasks import KINDS, PHYSICS_TASKS, SPLITS, Scene, check_tasks, episodes, make_scene, sim_tasks
from .workcell import TASKS, Randomization, SimConfig, Workcell, task_from_instruction

__all__ = ["Workcell", "SimConfig", "Randomization", "TASKS", "ScriptedExpert", "SimRobot",
           "SimCamera", "task_from_instruction", "run_episode", "IKError", "fk", "ik", "jacobian",
           "LOWER", "UPPER", "HOME", "MAX_SPEED", "JOINT_NAMES", "ObjectSpec", "Scene", "episodes",
           "make_scene", "KINDS", "SPLITS", "PHYSICS_TASKS", "sim_tasks", "check_tasks"]
