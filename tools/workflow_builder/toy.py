"""Toy-world workflows: the embedded toy model edits a generated example, the toy judge scores it."""

from __future__ import annotations

from .graph import Graph
from .kiwi_edit import edit_chain

def _toy_edit(pack, reference: bool) -> Graph:
    """The embedded toy model edits a toy example, the toy judge scores it against the ground truth."""
    g = Graph(pack)
    kind = "any with reference" if reference else "any without reference"
    seed = 2000000
    g.add("Note", (20, 60), {"text": "Toy world: the embedded toy Kiwi model (a few MB, trained by comfy-kiwi on "
                                     "coloured shapes) edits a generated toy video; the Kiwi Toy Judge scores "
                                     "the result against the exact ground truth. No downloads needed.\n\n"
                                     "Change the seed for another example. docs/TOY_BENCHMARK.md of comfy-kiwi."},
          width=320, height=230)
    loader = g.add("KiwiToyModelLoader", (360, 60), {})
    example = g.add("KiwiToyExample", (20, 420), {"seed": seed, "kind": kind}, width=300)
    # the instruction the example node will output, shown in the encode node's (socket-driven) widget
    instruction = pack.NODE_CLASS_MAPPINGS["KiwiToyExample"]().make(seed, kind)[1]
    dec = edit_chain(g, loader, example, instruction, steps=50, reference=example if reference else None,
                      reference_output="reference", frames_output="source")
    encode = next(n for n in g.nodes if n["type"] == "KiwiMLLMEncode")
    g.link(example, "instruction", encode, "instruction")      # the widget becomes a socket
    judge = g.add("KiwiToyJudge", (1560, 60), {}, width=300)
    g.link(dec, "images", judge, "edited")
    g.link(example, "example", judge, "example")
    scores = g.add("PreviewAny", (1900, 60), {}, title="Toy judge scores", width=360)
    g.link(judge, "report", scores, "source")
    show = g.add("PreviewImage", (1560, 300), {}, title="Edited frames", width=300)
    g.link(dec, "images", show, "images")
    truth = g.add("PreviewImage", (1560, 560), {}, title="Ground truth", width=300)
    g.link(example, "target", truth, "images")
    g.group("Toy judge", [judge, scores, show, truth], "#3a8a4a")
    return g


def toy_edit(pack) -> Graph:
    return _toy_edit(pack, reference=False)


def toy_reference_edit(pack) -> Graph:
    return _toy_edit(pack, reference=True)
