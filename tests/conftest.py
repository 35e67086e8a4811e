import os

# Headless everywhere: Qt offscreen, SDL without a window or sound.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")


import pytest  # noqa: E402


@pytest.fixture
def attached_pad():
    """A real SDL virtual gamepad, attached (pygame sees a device) and detached afterwards."""
    import pygame
    from drivers.virtual_gamepad import VirtualGamepad
    pygame.joystick.init()
    pad = VirtualGamepad()
    pad.attach()
    yield pad
    pad.detach()
