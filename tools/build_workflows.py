"""Write the ComfyUI workflows in workflows/ (UI format, version 0.4) from one description each.

    python tools/build_workflows.py          # rewrites workflows/*.json

Node ids, slots and link ids are assigned here, so every file stays consistent with the node
definitions: widget values are given by input name and written in the order the node declares its
widgets (with the extra "control_after_generate" value after seeds, and the upload-button value
after LoadImage / LoadVideo file pickers, as ComfyUI's frontend saves them). The graph writer and the
workflows themselves, one module per family, are in tools/workflow_builder/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))          # tools/ (also when loaded by file path)
from workflow_builder import judging, kiwi_edit, methods, toy  # noqa: E402
from workflow_builder.graph import ROOT, Graph, load_pack  # noqa: E402,F401  (Graph: tools/render_workflow.py)

OUT = ROOT / "workflows"

WORKFLOWS = {
    "kiwi_instruction_video_edit.json": kiwi_edit.instruction_video_edit,
    "kiwi_reference_video_edit.json": kiwi_edit.reference_video_edit,
    "kiwi_image_edit.json": kiwi_edit.image_edit,
    "kiwi_all_parts.json": kiwi_edit.all_parts,
    "kiwi_reference_synthesis_then_edit.json": judging.reference_synthesis_then_edit,
    "kiwi_edit_then_judge.json": judging.edit_then_judge,
    "kiwi_viva_edit.json": methods.viva_edit,
    "kiwi_rvedit_edit.json": methods.rvedit_edit,
    "kiwi_imvideoedit_edit.json": methods.imvideoedit_edit,
    "toy_edit.json": toy.toy_edit,
    "toy_reference_edit.json": toy.toy_reference_edit,
}


def build_all(pack=None) -> dict[str, dict]:
    pack = pack or load_pack()
    return {name: fn(pack).to_json(name.removesuffix(".json")) for name, fn in WORKFLOWS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, wf in build_all().items():
        (OUT / name).write_text(json.dumps(wf, indent=2) + "\n")
        print(f"wrote workflows/{name}: {len(wf['nodes'])} nodes, {len(wf['links'])} links")


if __name__ == "__main__":
    main()
