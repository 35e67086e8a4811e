"""Tasks, instruction phrasings and held-out splits for the physics workcell.

A Scene says what is on the table and what to do: a task kind (pick, place_bowl, place_plate,
push, stack), the target object, for stack the support object, distractors, the instruction,
and which split it belongs to. `episodes(split, n, seed)` yields seeded Scenes; a Workcell
(physics backend) takes one with reset(seed, scene=...). Splits (SPLITS):

  train               seen objects, training phrasings            (the only split to learn from)
  seen                seen objects, training phrasings, other seeds (new placements)
  unseen_objects      target has a colour or shape never trained; training phrasings
  novel_instructions  seen objects, phrasings never trained
  reasoning           seen objects, named indirectly ("the cube the colour of the sky")

Scene seeds of the evaluation splits start at EVAL_SEED0, so their placements never repeat a
training scene. The legacy three tasks (TASKS in workcell.py) map onto scenes with legacy_scene().
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .objects import SEEN_COLOURS, SEEN_SHAPES, UNSEEN_COLOURS, UNSEEN_SHAPES, ObjectSpec

KINDS = ("pick", "place_bowl", "place_plate", "push", "stack")

# {obj} = the target ("red cube"), {sup} = the support of stack
TRAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "pick": ("pick up the {obj}", "lift the {obj}", "grab the {obj} and lift it"),
    "place_bowl": ("put the {obj} in the bowl", "place the {obj} into the bowl",
                   "drop the {obj} in the bowl"),
    "place_plate": ("put the {obj} on the plate", "place the {obj} onto the plate",
                    "set the {obj} down on the plate"),
    "push": ("push the {obj} to the marked spot", "slide the {obj} onto the marker",
             "push the {obj} onto the target"),
    "stack": ("stack the {obj} on the {sup}", "put the {obj} on top of the {sup}",
              "place the {obj} onto the {sup}"),
}
NOVEL_PHRASES: dict[str, tuple[str, ...]] = {
    "pick": ("raise the {obj} off the table", "could you take hold of the {obj} and hold it up"),
    "place_bowl": ("the {obj} belongs inside the bowl", "move the {obj} so it ends up in the bowl"),
    "place_plate": ("the {obj} should rest on the plate", "carry the {obj} over to the plate"),
    "push": ("nudge the {obj} until it sits on the marker", "shove the {obj} over to the marked place"),
    "stack": ("build a tower: the {obj} goes onto the {sup}", "balance the {obj} on the {sup}"),
}
# reasoning-style: the colour is named by something that has it (the object words are replaced
# by "{shape} the colour of {thing}"); the templates are the training ones
COLOUR_RIDDLES: dict[str, tuple[str, ...]] = {
    "red": ("a ripe tomato", "a fire engine"),
    "blue": ("the sky", "the deep sea"),
    "yellow": ("a banana", "a lemon"),
    "green": ("fresh grass", "a lime"),
}

SPLITS = ("train", "seen", "unseen_objects", "novel_instructions", "reasoning")
EVAL_SEED0 = 1_000_000
TRAIN_OBJECTS = [ObjectSpec(c, s) for c in SEEN_COLOURS for s in SEEN_SHAPES]
UNSEEN_OBJECTS = ([ObjectSpec(c, s) for c in UNSEEN_COLOURS for s in SEEN_SHAPES + UNSEEN_SHAPES]
                  + [ObjectSpec(c, s) for c in SEEN_COLOURS for s in UNSEEN_SHAPES])
STACK_SUPPORT_SHAPES = ("cube", "cylinder")     # flat tops; never an unseen shape in training


@dataclass(frozen=True)
class Scene:
    kind: str
    target: ObjectSpec
    instruction: str
    split: str = "train"
    support: ObjectSpec | None = None            # stack: the object to stack on
    distractors: tuple[ObjectSpec, ...] = field(default_factory=tuple)
    seed: int = 0                                # placement seed (Workcell.reset uses it)
    bowl_near: bool = False                      # the bowl is placed right beside the target (make_scene)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if (self.kind == "stack") != (self.support is not None):
            raise ValueError("a stack scene needs a support object, other kinds none")
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError(f"scene objects must differ in colour or shape, got {names}")

    @property
    def objects(self) -> tuple[ObjectSpec, ...]:
        """Target first, then the support (stack), then distractors."""
        return (self.target,) + ((self.support,) if self.support else ()) + tuple(self.distractors)

    @property
    def colour_twin(self) -> ObjectSpec | None:
        """An object of the target's colour and another shape on the table (the support or a distractor), if
        any: the scene can be solved only by telling shapes apart."""
        return next((o for o in self.objects[1:]
                     if o.colour == self.target.colour and o.shape != self.target.shape), None)


def phrase(template: str, target: ObjectSpec, support: ObjectSpec | None = None) -> str:
    return template.format(obj=target.words, sup=support.words if support else "")


def legacy_scene(task: str, seed: int = 0) -> Scene:
    """The scene of a legacy task key (pick_red, pick_blue, red_in_bowl): red + blue cube, bowl."""
    from .workcell import TASKS
    red, blue = ObjectSpec("red", "cube"), ObjectSpec("blue", "cube")
    if task == "pick_red":
        return Scene("pick", red, TASKS[task], distractors=(blue,), seed=seed)
    if task == "pick_blue":
        return Scene("pick", blue, TASKS[task], distractors=(red,), seed=seed)
    if task == "red_in_bowl":
        return Scene("place_bowl", red, TASKS[task], distractors=(blue,), seed=seed)
    raise KeyError(f"no legacy scene for task {task!r}")


# physics-only task keys with a fixed object set (usable as Workcell(SimConfig(task=...)))
PHYSICS_TASKS: dict[str, str] = {
    "red_on_plate": "put the red cube on the plate",
    "push_red": "push the red cube to the marked spot",
    "stack_red_on_blue": "stack the red cube on the blue cube",
}


def sim_tasks(physics: bool) -> dict[str, str]:
    """Task key -> instruction for the tasks a workcell can set up: the kinematic one the legacy
    TASKS, the physics one those and PHYSICS_TASKS."""
    from .workcell import TASKS
    return {**TASKS, **PHYSICS_TASKS} if physics else dict(TASKS)


# what a wording of each kind names besides its object: where the object goes (a place or push instruction cannot
# leave it out); stack puts it on a second object; a wording that names neither is a pick
KIND_CUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("place_bowl", ("bowl",)), ("place_plate", ("plate",)), ("push", ("marker", "marked", "spot", "target")))


def task_named_in(text: str, current: str, physics: bool) -> str | None:
    """The sim task an instruction that is not a task instruction asks for: its kind from what it names besides
    the object (KIND_CUES: the bowl, the plate, the marked spot; 'on the blue cube' or 'stack': stack; none: pick), its
    object the first one named ("grab the blue cube and lift it" -> pick_blue, "the red cube belongs inside the
    bowl" -> red_in_bowl). None when no sim task matches, or when the current task is a generated scene."""
    words = " ".join(re.findall(r"[a-z]+", str(text).lower()))
    known = sim_tasks(physics)
    if current not in known:
        return None                     # a generated scene (a kind, not a task key): keep its objects
    scenes = {k: task_scene(k) for k in known}
    objects = {o.words for sc in scenes.values() for o in (sc.target, sc.support) if o is not None}
    named = sorted((m.start(), o) for o in objects for m in re.finditer(rf"\b{o}\b", words))
    named = [o for _, o in named]
    if not named:
        return None
    kinds = [k for k, cues in KIND_CUES if any(re.search(rf"\b{c}\b", words) for c in cues)]
    others = [o for o in named if o != named[0]]
    on_other = others and re.search(rf"\b(stack|tower|(on|onto|upon|atop|on top of) (the |a )?{others[0]})\b", words)
    kind = kinds[0] if len(kinds) == 1 else None if kinds else "stack" if on_other else "pick"
    hits = [k for k, sc in scenes.items() if sc.kind == kind and sc.target.words == named[0]
            and (kind != "stack" or sc.support.words == others[0])]
    return hits[0] if len(hits) == 1 else None


def check_tasks(tasks, physics: bool) -> None:
    """ValueError naming every task key the chosen sim cannot set up, and the ones it can."""
    known = sim_tasks(physics)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} for the {'physics' if physics else 'kinematic'} sim; "
                         f"known: {', '.join(known)}")


def task_scene(task: str, seed: int = 0) -> Scene:
    """Scene for a legacy or PHYSICS_TASKS key."""
    red, blue = ObjectSpec("red", "cube"), ObjectSpec("blue", "cube")
    if task == "red_on_plate":
        return Scene("place_plate", red, PHYSICS_TASKS[task], distractors=(blue,), seed=seed)
    if task == "push_red":
        return Scene("push", red, PHYSICS_TASKS[task], distractors=(blue,), seed=seed)
    if task == "stack_red_on_blue":
        return Scene("stack", red, PHYSICS_TASKS[task], support=blue, seed=seed)
    return legacy_scene(task, seed)


def _pick_objects(rng: np.random.Generator, pool: list[ObjectSpec], k: int,
                  exclude: set[str]) -> list[ObjectSpec]:
    cands = [o for o in pool if o.name not in exclude]
    idx = rng.choice(len(cands), size=min(k, len(cands)), replace=False)
    return [cands[i] for i in idx]


def make_scene(split: str, kind: str, seed: int, max_distractors: int = 2, confuser: float = 0.0,
               bowl_near: float = 0.0) -> Scene:
    """One seeded scene of `kind` for `split` (see the module docstring).
    confuser: the probability that a distractor of the target's colour and another shape (the red cylinder
    beside the red cube) is put on the table if the scene has none (nor a stack support of that kind), drawn
    from a random stream of its own, so confuser=0 gives the same scenes as before. A plain draw has such a
    pair in about one scene in five; they are where a policy that learnt colour better than shape fails.
    bowl_near: the probability that the bowl is placed right beside the target (physics._place: its rim
    2-5 cm from the target, in any direction), again from a stream of its own. In a plain draw 2-6 % of the
    pick scenes have the bowl so near that the open fingers would meet its wall unless the wrist turns (the
    expert's grasp yaw); they are where a policy that never learnt to turn the wrist drops the object."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0.0 <= confuser <= 1.0:
        raise ValueError(f"confuser must be a probability in [0, 1], got {confuser}")
    if not 0.0 <= bowl_near <= 1.0:
        raise ValueError(f"bowl_near must be a probability in [0, 1], got {bowl_near}")
    rng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split)])
    targets = UNSEEN_OBJECTS if split == "unseen_objects" else TRAIN_OBJECTS
    target = targets[int(rng.integers(len(targets)))]
    used = {target.name}
    support = None
    if kind == "stack":
        sup_pool = [o for o in TRAIN_OBJECTS if o.shape in STACK_SUPPORT_SHAPES
                    and (split != "reasoning" or o.colour != target.colour)]   # would give it away
        support = _pick_objects(rng, sup_pool, 1, used)[0]
        used.add(support.name)
    # distractors: seen objects (+ unseen ones only in the unseen_objects split); never the
    # same colour *and* shape as the target, so the instruction names exactly one object
    dpool = TRAIN_OBJECTS + (UNSEEN_OBJECTS if split == "unseen_objects" else [])
    n_d = int(rng.integers(0 if kind == "stack" else 1, max_distractors + 1))
    distractors = tuple(_pick_objects(rng, dpool, n_d, used))
    if confuser > 0.0 and max_distractors > 0:
        crng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split), 1])
        same = [o for o in dpool if o.colour == target.colour and o.shape != target.shape and o.name not in used]
        if crng.random() < confuser and same and not any(d in same for d in distractors):
            # (a stack support of that kind is in `used`: then `same` is empty and the scene has its twin)
            twin = same[int(crng.integers(len(same)))]
            distractors = (distractors[:max_distractors - 1] if len(distractors) >= max_distractors
                           else distractors) + (twin,)
    if split == "novel_instructions":
        templates = NOVEL_PHRASES[kind]
    else:
        templates = TRAIN_PHRASES[kind]
    template = templates[int(rng.integers(len(templates)))]
    if split == "reasoning":
        riddles = COLOUR_RIDDLES[target.colour]
        words = f"{target.shape} the colour of {riddles[int(rng.integers(len(riddles)))]}"
        # the riddle must pick out one object: no distractor may share the target's shape
        # (a stack support may: it has another colour and is named plainly)
        distractors = tuple(d for d in distractors if d.shape != target.shape)
        text = template.format(obj=words, sup=support.words if support else "")
    else:
        text = phrase(template, target, support)
    near = bool(bowl_near > 0.0 and
                np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split), 2]).random() < bowl_near)
    return Scene(kind, target, text, split, support, distractors, seed, bowl_near=near)


def episodes(split: str, n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS,
             confuser: float = 0.0, bowl_near: float = 0.0) -> Iterator[Scene]:
    """n seeded scenes of `split`, cycling through `kinds`. Training scene seeds are
    seed, seed+1, ...; evaluation splits use EVAL_SEED0 + seed + i (never a training scene).
    confuser: make_scene's share of scenes with a same-colour, other-shape distractor;
    bowl_near: its share of scenes with the bowl right beside the target."""
    base = seed if split == "train" else EVAL_SEED0 + seed
    for i in range(int(n)):
        yield make_scene(split, kinds[i % len(kinds)], base + i, confuser=confuser, bowl_near=bowl_near)


def training_vocabulary() -> tuple[set[str], set[str]]:
    """(object names, instruction templates) a training split may contain."""
    return {o.name for o in TRAIN_OBJECTS}, {t for ts in TRAIN_PHRASES.values() for t in ts}
