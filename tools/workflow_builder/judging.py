"""Judging workflows: reference synthesis before an edit, and an edit scored by a VLM judge and CLIP rewards."""

from __future__ import annotations

from .downloads import RELEASES, download_note, judge_download_note, clip_models, qwen_vl_models, release_models
from .graph import Graph
from .kiwi_edit import LOADER, edit_chain, video_in_out, video_out

VLM = {"dtype": "auto", "device": "auto", "max_frames": 16, "max_pixels_per_frame": 262144,
       "image_max_pixels": 802816}


def reference_synthesis_then_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"
    instruction = "Replace the dog with the toy in the reference image."
    g.add("Note", (20, 60), {"text": "Reference synthesis, then a reference-guided edit (RefVIE recipe).\n\n" +
                                     download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = video_in_out(g, "kiwi_source.mp4")
    photo = g.add("LoadImage", (20, 900), {"image": "kiwi_object_photo.png"}, title="Photo with the object",
                  width=300)
    vlm = g.add("KiwiVLMLoader", (360, 900), dict(VLM, vlm_name="Qwen2.5-VL-7B-Instruct"),
                models=qwen_vl_models())
    ground = g.add("KiwiGround", (360, 1130), {"description": "the toy", "target": "object", "frame_index": 0,
                                               "coordinate_space": "input", "combine": "largest", "attempts": 3,
                                               "seed": 0, "on_failure": "whole image"})
    ref = g.add("KiwiReferenceFromMask", (760, 900), {"kind": "local", "frame_index": 0, "threshold": 0.5,
                                                      "margin": 16, "dilate": 4, "fill": "pyramid",
                                                      "iterations": 200})
    quality = g.add("KiwiReferenceQuality", (760, 1180), {"instruction": instruction, "kind": "local",
                                                          "frame_index": 0, "threshold": 6.0, "attempts": 3,
                                                          "seed": 0, "on_failure": "report"})
    show_ref = g.add("PreviewImage", (1160, 900), {}, title="Reference", width=300, height=260)
    show_q = g.add("PreviewAny", (1160, 1180), {}, title="Reference quality (1-10; -1 = unreadable)", width=300)
    for a, out, b, inp in ((vlm, "vlm", ground, "vlm"), (photo, "IMAGE", ground, "image"),
                           (photo, "IMAGE", ref, "image"), (ground, "mask", ref, "mask"),
                           (vlm, "vlm", quality, "vlm"), (ref, "reference", quality, "reference"),
                           (photo, "IMAGE", quality, "edited"), (ref, "reference", show_ref, "images"),
                           (quality, "score", show_q, "source")):
        g.link(a, out, b, inp)
    note = g.add("Note", (20, 1040), {"text": "Qwen2.5-VL finds the object in the photo; its cut-out on white is the "
                                              "reference. If no box can be read, Kiwi Ground uses the whole photo "
                                              "(on_failure; set error to stop instead). A mask from any segmentation "
                                              "node can replace Kiwi Ground.\n\n" + judge_download_note(clip=False)},
                 width=320, height=340)
    g.group("Reference synthesis", [photo, vlm, ground, ref, quality, show_ref, show_q, note], "#6a3a8a")
    dec = edit_chain(g, loader, prep, instruction, reference=ref, reference_output="reference")
    video_out(g, dec, comps)
    return g


def edit_then_judge(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    instruction = "Replace the red car with a blue bicycle."
    g.add("Note", (20, 60), {"text": "Edit, then score the edit with a VLM judge and CLIP rewards.\n\n" +
                                     download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = video_in_out(g, "kiwi_source.mp4")
    dec = edit_chain(g, loader, prep, instruction)
    video_out(g, dec, comps)
    vlm = g.add("KiwiVLMLoader", (20, 900), dict(VLM, vlm_name="Qwen2.5-VL-7B-Instruct"), models=qwen_vl_models())
    judge = g.add("KiwiJudge", (360, 900), {"instruction": instruction, "rubric": "vie-bench", "attempts": 3,
                                            "seed": 0, "cap": "rubric default", "on_failure": "report", "fps": 0.0,
                                            "max_new_tokens": 512}, width=360)
    show_judge = g.add("PreviewAny", (760, 900), {}, title="Judge scores", width=400, height=300)
    for a, out, b, inp in ((vlm, "vlm", judge, "vlm"), (prep, "images", judge, "source"),
                           (dec, "images", judge, "edited"), (comps, "fps", judge, "fps"),
                           (judge, "scores_json", show_judge, "source")):
        g.link(a, out, b, inp)
    g.add("Note", (1420, 900), {"text": "Kiwi Judge asks Qwen2.5-VL for the rubric's scores; on_failure = report "
                                               "gives overall -1 (reasons in the JSON) instead of stopping when no "
                                               "answer can be read. Kiwi CLIP Rewards: R_IF, R_SP, PickScore.\n\n" +
                                               judge_download_note(clip=True)}, width=420, height=480)
    g.group("VLM judge", [vlm, judge, show_judge], "#6a3a8a")
    clip = g.add("KiwiCLIPLoader", (20, 1300), {"clip_name": "clip-vit-large-patch14", "dtype": "auto",
                                                "device": "auto"}, models=clip_models("clip-vit-large-patch14"))
    pick = g.add("KiwiCLIPLoader", (20, 1460), {"clip_name": "PickScore_v1", "dtype": "auto", "device": "auto"},
                 title="Kiwi CLIP / PickScore Loader (PickScore)", models=clip_models("PickScore_v1"))
    rewards = g.add("KiwiRewards", (360, 1300), {"instruction_edit": instruction,
                                                 "text_source": "A red car driving along a street.",
                                                 "weight_if": 1.0, "weight_sp": 1.0, "weight_pickscore": 0.0,
                                                 "weight_tc": 0.0, "max_frames": 8, "aggregation": "mean_embedding"},
                    width=360)
    for a, out, b, inp in ((clip, "clip", rewards, "clip"), (pick, "clip", rewards, "pickscore"),
                           (prep, "images", rewards, "source"), (dec, "images", rewards, "edited")):
        g.link(a, out, b, inp)
    shown = []
    for i, (out, title) in enumerate((("weighted", "Weighted reward"), ("r_if", "R_IF (instruction following)"),
                                      ("r_sp", "R_SP (source preservation)"), ("pickscore", "PickScore"))):
        node = g.add("PreviewAny", (760 + 320 * (i % 2), 1300 + 160 * (i // 2)), {}, title=title, width=300)
        g.link(rewards, out, node, "source")
        shown.append(node)
    g.group("CLIP rewards", [clip, pick, rewards, *shown], "#6a3a8a")
    return g
