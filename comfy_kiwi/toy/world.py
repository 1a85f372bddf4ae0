"""The toy editing world: procedural videos of coloured shapes and templated edits, deterministic from a seed.

A scene is a solid background and one to three objects (square, circle, triangle in one of six colours).
The 32×32 frame is split into four 16×16 cells (top left, top right, bottom left, bottom right); each
object lives in its own cell and bounces inside it, so objects never overlap and an added object always
has a free, nameable place. Every pixel is exactly one palette colour, so the toy judge can read any
video back as palette labels (see ``judge.py``).

An edit changes the scene *description*, and the target video is the edited description rendered again:
the ground truth is exact and the changed region is known per pixel. Edit kinds:

========== ============================================== ==========================
kind       example instruction                            reference image
========== ============================================== ==========================
recolour   "make the red circle blue"                     —
remove     "remove the red circle"                        —
add        "add a blue square in the top left"            —
replace    "replace the red circle with a green triangle" —
background "change the background to black"               —
ref_add    "add the reference object in the top left"     the object on white
ref_replace "replace the red circle with the reference object" the object on white
========== ============================================== ==========================

Added objects stand still at the centre of their cell (nothing in the instruction says how they move);
replaced objects keep the motion of the object they replace.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import InputError

FRAME_SIZE = 32            # pixels per side; a multiple of 32 as the Kiwi frame preparation wants
CELL = 16                  # four cells of 16×16
OBJECT_SIZE = 8            # every shape fits an 8×8 box
NUM_FRAMES = 17            # 4k+1 (the Wan temporal factor): about two seconds at FPS
FPS = 8

# Exact 8-bit colours, far apart in RGB, so nearest-colour labelling of a generated video is robust.
OBJECT_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
                  "yellow": (240, 220, 30), "purple": (140, 40, 180), "orange": (250, 130, 20)}
BACKGROUND_COLOURS = {"white": (240, 240, 240), "black": (15, 15, 15), "gray": (128, 128, 128),
                      "pink": (245, 160, 200)}
PALETTE_NAMES = tuple(OBJECT_COLOURS) + tuple(BACKGROUND_COLOURS)
PALETTE_RGB = np.array([OBJECT_COLOURS.get(n, BACKGROUND_COLOURS.get(n)) for n in PALETTE_NAMES], np.uint8)
SHAPES = ("square", "circle", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")   # cell index 0..3
EDIT_KINDS = ("recolour", "remove", "add", "replace", "background", "ref_add", "ref_replace")
REFERENCE_KINDS = ("ref_add", "ref_replace")
REFERENCE_BACKGROUND = "white"

# Paraphrases per kind; placeholders: {c} {s} (the edited object), {nc} {ns} (new object), {pos}, {bg}.
TEMPLATES = {
    "recolour": ("make the {c} {s} {nc}", "turn the {c} {s} {nc}", "change the colour of the {c} {s} to {nc}"),
    "remove": ("remove the {c} {s}", "delete the {c} {s}", "erase the {c} {s}"),
    "add": ("add a {nc} {ns} in the {pos}", "put a {nc} {ns} in the {pos}"),
    "replace": ("replace the {c} {s} with a {nc} {ns}", "swap the {c} {s} for a {nc} {ns}"),
    "background": ("change the background to {bg}", "make the background {bg}"),
    "ref_add": ("add the reference object in the {pos}", "put the object from the reference image in the {pos}"),
    "ref_replace": ("replace the {c} {s} with the reference object",
                    "swap the {c} {s} for the object from the reference image"),
}


def palette_index(name: str) -> int:
    return PALETTE_NAMES.index(name)


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str
    cell: int                       # 0..3, see POSITIONS
    start: tuple[int, int]          # (y, x) offset inside the cell, in half pixels
    velocity: tuple[int, int]       # half pixels per frame; (0, 0) stands still

    def offset(self, t: int) -> tuple[int, int]:
        """Top-left (y, x) of the object's box inside its cell at frame ``t`` (bouncing off the cell walls)."""
        hi = 2 * (CELL - OBJECT_SIZE - 1)          # one-pixel margin on both sides, in half pixels
        out = []
        for p0, v in zip(self.start, self.velocity):
            p = (p0 - 2 + v * t) % (2 * (hi - 2)) if hi > 2 else 0    # triangle wave over [2, hi]
            p = p if p <= hi - 2 else 2 * (hi - 2) - p
            out.append((p + 2) // 2)
        return out[0], out[1]


@dataclass(frozen=True)
class ToyScene:
    background: str
    objects: tuple[ToyObject, ...]
    num_frames: int = NUM_FRAMES

    def find(self, colour: str, shape: str) -> int:
        for i, o in enumerate(self.objects):
            if o.colour == colour and o.shape == shape:
                return i
        raise InputError(f"the toy scene has no {colour} {shape}; it holds "
                         f"{', '.join(f'a {o.colour} {o.shape}' for o in self.objects) or 'no objects'}.")

    def free_cells(self) -> list[int]:
        used = {o.cell for o in self.objects}
        return [c for c in range(len(POSITIONS)) if c not in used]


@dataclass(frozen=True)
class ToyEdit:
    """One edit of a scene: what changes, in scene terms (``target`` indexes ``scene.objects``)."""

    kind: str
    target: int | None = None
    colour: str | None = None       # new object colour (recolour, add, replace, ref_*)
    shape: str | None = None        # new object shape (add, replace, ref_*)
    cell: int | None = None         # where an added object goes
    background: str | None = None   # new background

    @property
    def uses_reference(self) -> bool:
        return self.kind in REFERENCE_KINDS


@dataclass
class ToyExample:
    """A source/target pair with everything the judge needs."""

    seed: int
    scene: ToyScene
    edit: ToyEdit
    instruction: str
    source: np.ndarray              # [F, H, W, 3] uint8
    target: np.ndarray              # [F, H, W, 3] uint8
    source_labels: np.ndarray       # [F, H, W] palette indices
    target_labels: np.ndarray       # [F, H, W]
    reference: np.ndarray | None = None     # [H, W, 3] uint8 (the new object on white), ref_* kinds
    meta: dict = field(default_factory=dict)

    @property
    def edit_mask(self) -> np.ndarray:
        """[F, H, W] bool: where source and target differ."""
        return self.source_labels != self.target_labels


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------

def shape_mask(shape: str) -> np.ndarray:
    """[8, 8] bool footprint of a shape (hard edges: every pixel is one colour)."""
    y, x = np.mgrid[0:OBJECT_SIZE, 0:OBJECT_SIZE].astype(np.float32) + 0.5
    c = OBJECT_SIZE / 2
    if shape == "square":
        return np.ones((OBJECT_SIZE, OBJECT_SIZE), bool)
    if shape == "circle":
        return (y - c) ** 2 + (x - c) ** 2 <= (c - 0.2) ** 2
    if shape == "triangle":     # apex up
        return np.abs(x - c) <= y / 2
    raise InputError(f"unknown toy shape {shape!r}; known: {', '.join(SHAPES)}.")


def cell_origin(cell: int) -> tuple[int, int]:
    return (cell // 2) * CELL, (cell % 2) * CELL


def render_labels(scene: ToyScene, size: int = FRAME_SIZE) -> np.ndarray:
    """[F, H, W] palette indices of a scene."""
    labels = np.full((scene.num_frames, size, size), palette_index(scene.background), np.uint8)
    for obj in scene.objects:
        mask = shape_mask(obj.shape)
        cy, cx = cell_origin(obj.cell)
        for t in range(scene.num_frames):
            dy, dx = obj.offset(t)
            region = labels[t, cy + dy:cy + dy + OBJECT_SIZE, cx + dx:cx + dx + OBJECT_SIZE]
            region[mask] = palette_index(obj.colour)
    return labels


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    return PALETTE_RGB[labels]


def reference_image(colour: str, shape: str, size: int = FRAME_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [H, W, 3], labels [H, W]): the object alone, centred on a white canvas."""
    scene = ToyScene(REFERENCE_BACKGROUND, (), num_frames=1)
    labels = render_labels(scene, size)[0]
    o = (size - OBJECT_SIZE) // 2
    labels[o:o + OBJECT_SIZE, o:o + OBJECT_SIZE][shape_mask(shape)] = palette_index(colour)
    return labels_to_rgb(labels), labels


# --------------------------------------------------------------------------------------------------
# random scenes and edits
# --------------------------------------------------------------------------------------------------

def random_object(rng: np.random.Generator, cell: int, taken: set, moving: bool = True,
                  exclude_colour: str | None = None) -> ToyObject:
    """An object with a (colour, shape) not in ``taken`` and not in the background colour."""
    choices = [(c, s) for c in OBJECT_COLOURS for s in SHAPES if (c, s) not in taken and c != exclude_colour]
    colour, shape = choices[rng.integers(len(choices))]
    hi = 2 * (CELL - OBJECT_SIZE - 1)
    start = (int(rng.integers(2, hi + 1)), int(rng.integers(2, hi + 1)))
    velocity = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))) if moving else (0, 0)
    return ToyObject(shape, colour, cell, start, velocity)


def random_scene(rng: np.random.Generator, num_frames: int = NUM_FRAMES, max_objects: int = 3) -> ToyScene:
    background = list(BACKGROUND_COLOURS)[rng.integers(len(BACKGROUND_COLOURS))]
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.permutation(len(POSITIONS))[:n]
    objects, taken = [], set()
    for cell in sorted(int(c) for c in cells):
        obj = random_object(rng, cell, taken)
        taken.add((obj.colour, obj.shape))
        objects.append(obj)
    return ToyScene(background, tuple(objects), num_frames)


def static_object(colour: str, shape: str, cell: int) -> ToyObject:
    """An added object: still, centred in its cell."""
    centre = CELL - OBJECT_SIZE        # (CELL - OBJECT_SIZE) / 2 pixels, in half pixels
    return ToyObject(shape, colour, cell, (centre, centre), (0, 0))


def _new_look(rng: np.random.Generator, scene: ToyScene, keep_shape: str | None = None,
              old: tuple[str, str] | None = None) -> tuple[str, str]:
    """A (colour, shape) not already in the scene; with ``keep_shape`` only the colour changes."""
    taken = {(o.colour, o.shape) for o in scene.objects}
    choices = [(c, s) for c in OBJECT_COLOURS for s in SHAPES
               if (c, s) not in taken and (keep_shape is None or s == keep_shape)
               and (old is None or c != old[0])]
    return choices[rng.integers(len(choices))]


def random_edit(rng: np.random.Generator, scene: ToyScene, kind: str) -> ToyEdit:
    if kind not in EDIT_KINDS:
        raise InputError(f"unknown toy edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}.")
    target = int(rng.integers(len(scene.objects))) if scene.objects else None
    if kind in ("recolour", "remove", "replace", "ref_replace") and target is None:
        raise InputError(f"a {kind} edit needs an object in the scene.")
    if kind == "recolour":
        obj = scene.objects[target]
        colour, _ = _new_look(rng, scene, keep_shape=obj.shape, old=(obj.colour, obj.shape))
        return ToyEdit(kind, target, colour=colour)
    if kind == "remove":
        return ToyEdit(kind, target)
    if kind in ("add", "ref_add"):
        free = scene.free_cells()
        if not free:
            raise InputError("no free cell for an added object (the scene has four objects).")
        colour, shape = _new_look(rng, scene)
        return ToyEdit(kind, colour=colour, shape=shape, cell=free[rng.integers(len(free))])
    if kind in ("replace", "ref_replace"):
        obj = scene.objects[target]
        choices = [(c, s) for c, s in [_new_look(rng, scene) for _ in range(8)] if s != obj.shape]
        colour, shape = choices[0] if choices else _new_look(rng, scene)
        return ToyEdit(kind, target, colour=colour, shape=shape)
    others = [b for b in BACKGROUND_COLOURS if b != scene.background]
    return ToyEdit(kind, background=others[rng.integers(len(others))])


def apply_edit(scene: ToyScene, edit: ToyEdit) -> ToyScene:
    """The edited scene description."""
    objects = list(scene.objects)
    if edit.kind == "recolour":
        objects[edit.target] = replace(objects[edit.target], colour=edit.colour)
    elif edit.kind == "remove":
        del objects[edit.target]
    elif edit.kind in ("add", "ref_add"):
        objects.append(static_object(edit.colour, edit.shape, edit.cell))
    elif edit.kind in ("replace", "ref_replace"):
        objects[edit.target] = replace(objects[edit.target], colour=edit.colour, shape=edit.shape)
    elif edit.kind == "background":
        return replace(scene, background=edit.background)
    return replace(scene, objects=tuple(objects))


def instruction_for(rng: np.random.Generator, scene: ToyScene, edit: ToyEdit) -> str:
    templates = TEMPLATES[edit.kind]
    obj = scene.objects[edit.target] if edit.target is not None else None
    return templates[rng.integers(len(templates))].format(
        c=obj.colour if obj else "", s=obj.shape if obj else "", nc=edit.colour, ns=edit.shape,
        pos=POSITIONS[edit.cell] if edit.cell is not None else "", bg=edit.background)


def choose_kind(rng: np.random.Generator, scene: ToyScene, kinds) -> str:
    """A kind from ``kinds`` the scene allows (add needs a free cell, the others an object)."""
    allowed = [k for k in kinds if (k not in ("add", "ref_add") or scene.free_cells())
               and (k in ("add", "ref_add", "background") or scene.objects)]
    if not allowed:
        raise InputError(f"none of the edit kinds {list(kinds)} applies to this scene.")
    return allowed[rng.integers(len(allowed))]


def make_example(seed: int, kinds=EDIT_KINDS, num_frames: int = NUM_FRAMES) -> ToyExample:
    """One source/target pair, fully determined by ``seed`` (and the allowed ``kinds``, ``num_frames``;
    ``num_frames`` 1 gives an image pair)."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise InputError(f"toy videos need 4k+1 frames (1, 5, 9, 13, 17, ...), got {num_frames}.")
    kinds = tuple(kinds)
    for k in kinds:
        if k not in EDIT_KINDS:
            raise InputError(f"unknown toy edit kind {k!r}; known: {', '.join(EDIT_KINDS)}.")
    rng = np.random.default_rng([int(seed), 1234])
    scene = random_scene(rng, num_frames)
    kind = choose_kind(rng, scene, kinds)
    edit = random_edit(rng, scene, kind)
    return build_example(seed, scene, edit, instruction_for(rng, scene, edit))


def build_example(seed: int, scene: ToyScene, edit: ToyEdit, instruction: str) -> ToyExample:
    src_labels = render_labels(scene)
    tgt_labels = render_labels(apply_edit(scene, edit))
    ref = reference_image(edit.colour, edit.shape)[0] if edit.uses_reference else None
    return ToyExample(seed, scene, edit, instruction, labels_to_rgb(src_labels), labels_to_rgb(tgt_labels),
                      src_labels, tgt_labels, ref, {"kind": edit.kind})


def split_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """Disjoint seed ranges: "train" from 0, "test" (held out) from 10**6, "demo" from 2·10**6."""
    offsets = {"train": 0, "test": 1_000_000, "demo": 2_000_000}
    if split not in offsets:
        raise InputError(f"unknown toy split {split!r}; use one of {', '.join(offsets)}.")
    return [offsets[split] + start + i for i in range(count)]
