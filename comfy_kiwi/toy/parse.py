"""Read a templated toy instruction back into a ``ToyEdit`` of a known scene.

The command line uses this to judge an edit of a bundled toy video whatever templated instruction
the user typed: the scene comes from the video's sidecar file, the edit from the instruction, and the
ground truth is rendered from both.
"""

from __future__ import annotations

import re

from ..errors import InputError
from .world import (BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, SHAPES, TEMPLATES, ToyEdit, ToyScene,
                    reference_image)

_FIELDS = {"c": OBJECT_COLOURS, "nc": OBJECT_COLOURS, "s": SHAPES, "ns": SHAPES, "pos": POSITIONS,
           "bg": BACKGROUND_COLOURS}


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template)
    for name, words in _FIELDS.items():
        alternatives = "|".join(re.escape(w) for w in words)
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})")
    return re.compile(out + r"\.?", re.IGNORECASE)


_PATTERNS = [(kind, _pattern(t)) for kind, ts in TEMPLATES.items() for t in ts]


def parse_instruction(text: str, scene: ToyScene, reference_colour_shape: tuple[str, str] | None = None) -> ToyEdit:
    """The edit a templated instruction asks for on ``scene``. Reference edits need the (colour, shape)
    the reference image shows (``reference_colour_shape``)."""
    text = " ".join(text.strip().split())
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        f = {k: v.lower() for k, v in m.groupdict().items() if v is not None}
        target = scene.find(f["c"], f["s"]) if "c" in f else None
        if kind in ("ref_add", "ref_replace"):
            if reference_colour_shape is None:
                raise InputError(f"{text!r} uses a reference image; pass one (a toy object on white).")
            f["nc"], f["ns"] = reference_colour_shape
        cell = POSITIONS.index(f["pos"]) if "pos" in f else None
        if cell is not None and cell not in scene.free_cells():
            raise InputError(f"the {f['pos']} of this toy video is taken; add objects to a free place "
                             f"({', '.join(POSITIONS[c] for c in scene.free_cells()) or 'none left'}).")
        return ToyEdit(kind, target, colour=f.get("nc"), shape=f.get("ns"), cell=cell, background=f.get("bg"))
    examples = "; ".join(ts[0] for ts in TEMPLATES.values())
    raise InputError(f"not a toy instruction: {text!r}. The toy model understands templates such as: {examples} "
                     f"(colours {', '.join(OBJECT_COLOURS)}; shapes {', '.join(SHAPES)}; places "
                     f"{', '.join(POSITIONS)}; backgrounds {', '.join(BACKGROUND_COLOURS)}).")


def reference_colour_shape(image) -> tuple[str, str] | None:
    """(colour, shape) of the toy object a reference image shows (exact match with the renderer), or None."""
    from .judge import nearest_labels
    labels = nearest_labels(image)[0]
    match = {(c, s): float((reference_image(c, s, labels.shape[0])[1] == labels).mean())
             for c in OBJECT_COLOURS for s in SHAPES}
    best = max(match, key=match.get)
    return best if match[best] > 0.99 else None
