"""Policy runtime and validation (Qt-free; torch is imported only inside model/training code).

    from teleop_app.policy import load_policy, check_compatible, PolicyRunner
"""
from .base import Policy, PolicyError, PolicyMeta, PolicyMismatchError, check_compatible, load_policy
from .runner import PolicyOutputError, PolicyRunner, RolloutResult, rollout

__all__ = ["Policy", "PolicyError", "PolicyMeta", "PolicyMismatchError", "check_compatible", "load_policy",
           "PolicyOutputError", "PolicyRunner", "RolloutResult", "rollout"]
