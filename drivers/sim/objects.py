"""Object catalogue of the physics workcell: shapes x colours, and which of them training may see.

An object is a (colour, shape) pair. Sizes, mass and friction live here (one place) for the
MuJoCo model (physics.py), the renderer and the expert. The split of the catalogue is data:
SEEN_COLOURS x SEEN_SHAPES may appear in training scenes; anything with an UNSEEN colour or
an UNSEEN shape never does (tasks.py builds every scene from these sets; a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    # seen in training
    "red": (205, 30, 30),
    "blue": (30, 70, 210),
    "yellow": (228, 196, 36),
    "green": (40, 150, 45),
    # never in training
    "purple": (128, 48, 168),
    "orange": (236, 118, 18),
    "white": (232, 232, 226),
}
SEEN_COLOURS = ("red", "blue", "yellow", "green")
UNSEEN_COLOURS = ("purple", "orange", "white")

# shape -> (kind for MuJoCo and the renderer, half sizes)
#   box: half extents (x, y, z); cylinder/prism: (radius, half height)
SHAPES: dict[str, tuple[str, tuple[float, ...]]] = {
    "cube": ("box", (0.02, 0.02, 0.02)),
    "cylinder": ("cylinder", (0.02, 0.02)),
    # never in training
    "block": ("box", (0.015, 0.03, 0.02)),      # a 3 x 6 x 4 cm brick: grasped across its narrow side
    "prism": ("prism", (0.021, 0.02)),          # hexagonal prism
}
SEEN_SHAPES = ("cube", "cylinder")
UNSEEN_SHAPES = ("block", "prism")

DENSITY = 600.0          # kg/m^3 (wood-ish): a 4 cm cube weighs 38 g
FRICTION = 0.9           # sliding friction of every object unless a scene overrides it


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    friction: float = FRICTION

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if not 0.0 < self.friction <= 3.0:
            raise ValueError(f"friction must be in (0, 3], got {self.friction}")

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}"

    @property
    def words(self) -> str:
        """How instructions name it: 'red cube'."""
        return f"{self.colour} {self.shape}"

    @property
    def kind(self) -> str:
        return SHAPES[self.shape][0]

    @property
    def size(self) -> tuple[float, ...]:
        return SHAPES[self.shape][1]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def half_height(self) -> float:
        return self.size[-1]

    @property
    def footprint(self) -> float:
        """Radius of a circle around the object's footprint (for placement spacing)."""
        s = self.size
        return (s[0] ** 2 + s[1] ** 2) ** 0.5 if self.kind == "box" else s[0]

    @property
    def seen(self) -> bool:
        return self.colour in SEEN_COLOURS and self.shape in SEEN_SHAPES


def catalogue(seen: bool | None = None) -> list[ObjectSpec]:
    """All objects; seen=True only training objects, seen=False only held-out ones."""
    out = [ObjectSpec(c, s) for c in COLOURS for s in SHAPES]
    return out if seen is None else [o for o in out if o.seen == seen]
