"""teleop core: profiles, control loop, teleop mapping, safety, episodes, policy runtime, CLI.

Qt-free: the GUI in `ui/` is a view over these objects.
"""
__version__ = "0.1.0"
