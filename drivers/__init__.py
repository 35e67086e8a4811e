"""Hardware and simulated devices: arm buses, cameras, gamepads, the simulated workcell.

Nothing here imports Qt, `teleop_app` or `recorder`.
"""
