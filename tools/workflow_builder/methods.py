"""Workflows of the methods trained here (docs/METHODS.md): VIVA, RVEDiT, ImVideoEdit."""

from __future__ import annotations

from .downloads import (RELEASES, UMT5_DOWNLOAD, WAN21_T2V_1_3B, WAN21_UMT5, WAN21_VAE, WAN22_TI2V_5B, WAN22_VAE,
                        download_note, qwen_vl_models, release_models, umt5_models, wan21_t2v_1_3b_size)
from .graph import Graph
from .kiwi_edit import LOADER, video_in_out, video_out

METHOD_SAMPLER = {"seed": 42, "control_after_generate": "fixed", "steps": 50, "shift": 5.0, "step_cache": 0.0}


def source_column(g: Graph, max_pixels: int):
    """Load Video → Get Video Components → Kiwi Prepare Frames, stacked under the Note."""
    load = g.add("LoadVideo", (20, 520), {"file": "kiwi_source.mp4"}, width=300)
    comps = g.add("GetVideoComponents", (20, 680), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (20, 880), {"max_pixels": max_pixels, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    g.group("Source video", [load, comps, prep], "#3f789e")
    return comps, prep


def viva_edit(pack) -> Graph:
    """VIVA on Wan2.2 TI2V 5B: the Qwen2.5-VL instructor + trained refiner, CFG 2.0 on the instruction."""
    g = Graph(pack)
    qwen = "Qwen2.5-VL-3B-Instruct"
    g.add("Note", (20, 60), {"text": "VIVA edit (docs/METHODS.md): Wan2.2 TI2V 5B + the Qwen2.5-VL instructor + "
                                     "the VIVA weights you trained (preset viva-wan2.2-5b).\n\n"
                                     "Models (about 19 GB together: 5.00e9 DiT + 0.70e9 VAE + 3.75e9 Qwen "
                                     "parameters at 2 bytes): wan2.2_ti2v_5B_fp16.safetensors in "
                                     "models/diffusion_models/, wan2.2_vae.safetensors in models/vae/, and\n\n"
                                     f"hf download Qwen/{qwen} --local-dir models/text_encoders/{qwen}\n\n"
                                     "VIVA weights: copy runs/viva-wan2.2-5b/viva.safetensors into models/loras/ "
                                     "(comfy-kiwi-train train --config viva-wan2.2-5b). An Edit-GRPO LoRA goes "
                                     "between the DiT loader and the sampler through Kiwi Lora Loader."},
          width=320, height=400)
    dit = g.add("KiwiDiTLoader", (360, 60), dict(LOADER, dit_name=WAN22_TI2V_5B["name"]), models=[WAN22_TI2V_5B])
    vae = g.add("KiwiVAELoader", (360, 250), {"vae_name": WAN22_VAE["name"], "dtype": "auto", "device": "auto"},
                models=[WAN22_VAE])
    mllm = g.add("KiwiMLLMLoader", (360, 420), {"mllm_name": qwen, "kiwi_checkpoint": "none", "dtype": "auto",
                                                 "device": "auto"}, models=qwen_vl_models(qwen))
    weights = g.add("KiwiVIVALoader", (360, 620), {"weights_name": "viva.safetensors"})
    g.link(dit, "dit", weights, "dit")
    g.group("Models", [dit, vae, mllm, weights], "#3f789e")
    comps, prep = source_column(g, max_pixels=921600)
    enc = g.add("KiwiVIVAEncode", (760, 60), {"instruction": "Make the car red.", "encode_negative": True},
                width=360)
    src = g.add("KiwiEncodeSource", (760, 330), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiVIVASampler", (1160, 60), dict(METHOD_SAMPLER, cfg=2.0))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((mllm, "mllm", enc, "mllm"), (weights, "viva", enc, "viva"), (prep, "images", enc, "source"),
                           (vae, "vae", src, "vae"), (prep, "images", src, "source"), (dit, "dit", smp, "dit"),
                           (weights, "viva", smp, "viva"), (enc, "conditioning", smp, "conditioning"),
                           (src, "source", smp, "source"), (smp, "latent", dec, "latent"), (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    g.group("VIVA", [enc, src, smp, dec], "#8a6a3a")
    video_out(g, dec, comps)
    return g


def rvedit_edit(pack) -> Graph:
    """RVEDiT on the Kiwi-Edit instruct-reference release, as it trained: the run's fine-tuned DiT, X_e from the
    release's MLLM with the run's connector + LoRA, X_v from the trained embedder, X_ℓ = the instruction's umT5 rows."""
    g = Graph(pack)
    kind = "instruct-reference"
    instruction = "Replace the red car with a blue bicycle."
    g.add("Note", (20, 60), {"text": "RVEDiT edit (docs/METHODS.md), streams as in training: X_e = Kiwi MLLM Encode "
                                     "with the MLLM from Kiwi RVEDiT Loader (trained connector + LoRA), X_ℓ = Kiwi "
                                     "UMT5 Encode of the same instruction. umT5: " + UMT5_DOWNLOAD + "\n"
                                     "Weights (preset rvedit-kiwi-5b): runs/rvedit-kiwi-5b/rvedit.safetensors into "
                                     "models/loras/ and the fine-tuned DiT rvedit-dit.safetensors into "
                                     "models/diffusion_models/ (with dit_training = \"lora\": the release's DiT + "
                                     "Kiwi LoRA Loader).\n\n" + download_note([kind])},
          width=320, height=400)
    rel = "kiwi release: " + RELEASES[kind]          # the release's VAE and MLLM; the DiT is the run's own
    tuned = g.add("KiwiDiTLoader", (360, 60), dict(LOADER, dit_name="rvedit-dit.safetensors"),
                  title="Kiwi DiT Loader (the RVEDiT run's DiT)")
    vae = g.add("KiwiVAELoader", (360, 250), {"vae_name": rel, "dtype": "auto", "device": "auto"},
                models=release_models(kind, ("vae",)))
    mllm = g.add("KiwiMLLMLoader", (360, 420), {"mllm_name": rel, "kiwi_checkpoint": "none", "dtype": "auto",
                                                 "device": "auto"}, models=release_models(kind, ("mllm_encoder",)))
    weights = g.add("KiwiRVEDiTLoader", (760, 560), {"weights_name": "rvedit.safetensors", "split": -1})
    g.link(tuned, "dit", weights, "dit")
    g.link(mllm, "mllm", weights, "mllm")
    umt5 = g.add("KiwiUMT5Loader", (360, 640), {"encoder_name": WAN21_UMT5, "dtype": "auto", "device": "auto"},
                 models=umt5_models())
    comps, prep = video_in_out(g, "kiwi_source.mp4")
    enc = g.add("KiwiMLLMEncode", (760, 60), {"instruction": instruction, "encode_negative": False}, width=360)
    x_l = g.add("KiwiUMT5Encode", (760, 760), {"caption": instruction, "text_len": 512}, title="Kiwi UMT5 Encode (X_ℓ)",
                width=360)
    src = g.add("KiwiEncodeSource", (760, 310), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiRVEDiTSampler", (1160, 60), dict(METHOD_SAMPLER, cfg=1.0))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((weights, "mllm", enc, "mllm"), (prep, "images", enc, "source"), (vae, "vae", src, "vae"),
                           (prep, "images", src, "source"), (tuned, "dit", smp, "dit"),
                           (weights, "rvedit", smp, "rvedit"), (enc, "conditioning", smp, "conditioning"),
                           (umt5, "umt5", x_l, "umt5"), (x_l, "conditioning", smp, "instruction_text"),
                           (src, "source", smp, "source"), (smp, "latent", dec, "latent"),
                           (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    g.group("Models", [tuned, vae, mllm, umt5, weights], "#3f789e")
    g.group("RVEDiT", [enc, x_l, src, smp, dec], "#8a6a3a")
    video_out(g, dec, comps)
    return g


def imvideoedit_edit(pack) -> Graph:
    """ImVideoEdit on Wan2.1 T2V 1.3B: the trained Predict-Update modules beside the frozen DiT, the caption of the
    edited video through umT5, the source frames through the Wan2.1 VAE (no reference, no CFG)."""
    g = Graph(pack)
    caption = "A blue bicycle standing on a city street."
    g.add("Note", (20, 60), {"text": "ImVideoEdit edit (docs/METHODS.md): Wan2.1 T2V 1.3B + the ImVideoEdit weights "
                                     "you trained (preset imvideoedit-wan2.1-1.3b). The text is a caption of the "
                                     "edited video (what it should show), not an instruction; no reference image.\n\n"
                                     f"Models ({wan21_t2v_1_3b_size()}): {WAN21_T2V_1_3B['name']} in "
                                     f"models/diffusion_models/, {WAN21_VAE['name']} in models/vae/, and\n\n"
                                     f"{UMT5_DOWNLOAD}\n\n"
                                     "ImVideoEdit weights: copy runs/imvideoedit-1.3b/imvideoedit.safetensors into "
                                     "models/loras/ (comfy-kiwi-train train --config imvideoedit-wan2.1-1.3b)."},
          width=320, height=400)
    dit = g.add("KiwiDiTLoader", (360, 60), dict(LOADER, dit_name=WAN21_T2V_1_3B["name"]), models=[WAN21_T2V_1_3B])
    weights = g.add("KiwiImVideoEditLoader", (360, 250), {"weights_name": "imvideoedit.safetensors"})
    vae = g.add("KiwiVAELoader", (360, 370), {"vae_name": WAN21_VAE["name"], "dtype": "auto", "device": "auto"},
                models=[WAN21_VAE])
    umt5 = g.add("KiwiUMT5Loader", (360, 540), {"encoder_name": WAN21_UMT5, "dtype": "auto", "device": "auto"},
                 models=umt5_models())
    g.link(dit, "dit", weights, "dit")
    g.group("Models", [dit, weights, vae, umt5], "#3f789e")
    comps, prep = source_column(g, max_pixels=480 * 832)          # the paper's training size
    enc = g.add("KiwiUMT5Encode", (760, 60), {"caption": caption, "text_len": 512}, width=360)
    src = g.add("KiwiEncodeSource", (760, 330), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiImVideoEditSampler", (1160, 60), dict(METHOD_SAMPLER, schedule="kiwi"))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((umt5, "umt5", enc, "umt5"), (vae, "vae", src, "vae"), (prep, "images", src, "source"),
                           (weights, "imvideoedit", smp, "imvideoedit"), (enc, "conditioning", smp, "conditioning"),
                           (src, "source", smp, "source"), (smp, "latent", dec, "latent"), (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    g.group("ImVideoEdit", [enc, src, smp, dec], "#8a6a3a")
    video_out(g, dec, comps)
    return g
