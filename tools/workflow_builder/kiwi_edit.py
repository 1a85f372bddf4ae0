"""Kiwi-Edit release workflows: instruction / reference video edits, an image edit, every part wired apart."""

from __future__ import annotations

from .downloads import RELEASES, WAN22_VAE, download_note, release_models
from .graph import Graph

SAMPLER = {"seed": 42, "control_after_generate": "fixed", "steps": 50, "shift": 5.0, "cfg": 1.0, "denoise": 1.0,
           "schedule": "kiwi", "block_swap": -1, "step_cache": 0.0}
LOADER = {"dtype": "auto", "device": "auto", "attention": "auto"}


def edit_chain(g: Graph, loader: dict, frames: dict, instruction: str, y: int = 60, reference: dict | None = None,
                steps: int = 50, reference_output: str = "IMAGE", frames_output: str = "images"):
    """MLLM encode + source encode + sampler + decode, wired to a release loader and prepared frames."""
    enc = g.add("KiwiMLLMEncode", (760, y), {"instruction": instruction, "encode_negative": False}, width=360)
    src = g.add("KiwiEncodeSource", (760, y + 250), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiSampler", (1160, y), dict(SAMPLER, steps=steps))
    dec = g.add("KiwiVAEDecode", (1160, y + 300), {"tiled": False})
    g.link(loader, "mllm", enc, "mllm")
    g.link(frames, frames_output, enc, "source")
    g.link(loader, "vae", src, "vae")
    g.link(frames, frames_output, src, "source")
    if reference is not None:
        g.link(reference, reference_output, enc, "reference")
        g.link(reference, reference_output, src, "reference")
    g.link(loader, "dit", smp, "dit")
    g.link(enc, "conditioning", smp, "conditioning")
    g.link(src, "source", smp, "source")
    g.link(smp, "latent", dec, "latent")
    g.link(loader, "vae", dec, "vae")
    g.group("Kiwi-Edit", [enc, src, smp, dec], "#8a6a3a")
    return dec


def video_in_out(g: Graph, video_file: str):
    load = g.add("LoadVideo", (20, 420), {"file": video_file}, width=300)
    comps = g.add("GetVideoComponents", (20, 580), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (360, 420), {"max_pixels": 921600, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    g.group("Source video", [load, comps, prep], "#3f789e")
    return comps, prep


def video_out(g: Graph, decoded: dict, comps: dict, y: int = 60):
    create = g.add("CreateVideo", (1560, y), {"fps": 16.0, "bit_depth": 8}, width=260)
    save = g.add("SaveVideo", (1560, y + 200), {"filename_prefix": "video/kiwi-edit", "format": "auto",
                                                "codec": "auto"}, width=420)
    g.link(decoded, "images", create, "images")
    g.link(comps, "fps", create, "fps")          # keep the source's frame rate
    g.link(create, "VIDEO", save, "video")
    g.group("Output", [create, save], "#3a8a4a")


def instruction_video_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    g.add("Note", (20, 60), {"text": "Instruction-guided video edit (Kiwi-Edit).\n\n" + download_note([kind])},
          width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = video_in_out(g, "kiwi_source.mp4")
    dec = edit_chain(g, loader, prep, "Replace the red car with a blue bicycle.")
    video_out(g, dec, comps)
    return g


def reference_video_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"
    g.add("Note", (20, 60), {"text": "Reference-guided video edit: the reference image shows what to insert or how "
                                     "the result should look.\n\n" + download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = video_in_out(g, "kiwi_source.mp4")
    ref = g.add("LoadImage", (360, 780), {"image": "kiwi_reference.png"}, title="Reference image", width=300)
    dec = edit_chain(g, loader, prep, "Replace the dog with the toy in the reference image.", reference=ref)
    video_out(g, dec, comps)
    return g


def image_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    g.add("Note", (20, 60), {"text": "Image edit: one frame through the same models.\n\n" + download_note([kind])},
          width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    img = g.add("LoadImage", (20, 420), {"image": "kiwi_source.png"}, width=300)
    prep = g.add("KiwiPrepareFrames", (360, 420), {"max_pixels": 921600, "num_frames": 1, "frame_mode": "trim"})
    g.link(img, "IMAGE", prep, "images")
    dec = edit_chain(g, loader, prep, "Make it look like a watercolor painting.")
    save = g.add("SaveImage", (1560, 60), {"filename_prefix": "kiwi-edit"}, width=360)
    g.link(dec, "images", save, "images")
    return g


def all_parts(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    rel = "kiwi release: " + RELEASES[kind]
    g.add("Note", (20, 60), {"text": "Every block wired separately: DiT, LoRA, VAE and MLLM loaded on their own. "
                                     "Each loader lists its ComfyUI model folder and the parts of the releases in "
                                     "models/kiwi/.\n\n" + download_note([kind]) +
                                     "\nVAE: wan2.2_vae.safetensors in models/vae/ (or pick the release's vae)."},
          width=320, height=270)
    dit = g.add("KiwiDiTLoader", (20, 420), dict(LOADER, dit_name=rel),
                models=release_models(kind, ("transformer", "source_embedder")))
    lora = g.add("KiwiLoraLoader", (20, 610), {"lora_name": "none", "strength": 1.0})
    vae = g.add("KiwiVAELoader", (20, 760), {"vae_name": WAN22_VAE["name"], "dtype": "auto", "device": "auto"},
                models=[WAN22_VAE])
    mllm = g.add("KiwiMLLMLoader", (20, 930), {"mllm_name": rel, "kiwi_checkpoint": "none", "dtype": "auto",
                                                "device": "auto"}, models=release_models(kind, ("mllm_encoder",)))
    g.link(dit, "dit", lora, "dit")
    g.group("Models", [dit, lora, vae, mllm], "#3f789e")
    load = g.add("LoadVideo", (380, 420), {"file": "kiwi_source.mp4"}, width=300)
    comps = g.add("GetVideoComponents", (380, 580), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (380, 780), {"max_pixels": 921600, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    enc = g.add("KiwiMLLMEncode", (760, 60), {"instruction": "Turn the scene into a snowy winter day.",
                                              "encode_negative": False}, width=360)
    src = g.add("KiwiEncodeSource", (760, 310), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiSampler", (1160, 60), dict(SAMPLER))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((mllm, "mllm", enc, "mllm"), (prep, "images", enc, "source"), (vae, "vae", src, "vae"),
                           (prep, "images", src, "source"), (lora, "dit", smp, "dit"),
                           (enc, "conditioning", smp, "conditioning"), (src, "source", smp, "source"),
                           (smp, "latent", dec, "latent"), (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    video_out(g, dec, comps)
    return g
