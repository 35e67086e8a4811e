"""Servo-arm buses: Dynamixel Protocol 2.0 and Feetech STS over pyserial, plus a simulated bus.

    codecs (pure):   drivers.bus.dynamixel, drivers.bus.feetech
    transport:       drivers.bus.transport  (SerialTransport, DynamixelBus, FeetechBus, make_bus)
    arm (Robot):     drivers.bus.arm        (ServoArmConfig, ServoArm, Calibration)
    simulated bus:   drivers.bus.simbus     (SimServoBus on a pty, IdealServos, ServoBackend)
    errors:          drivers.bus.errors     (all DeviceError subclasses)

Nothing here imports drivers.sim at import time (SimServoBus.workcell() imports it lazily).
"""
