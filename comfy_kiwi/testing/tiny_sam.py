"""A tiny random SAM (``transformers.SamModel`` + ``SamProcessor``) written to a local folder, for tests of the
box → mask step of reference synthesis. Vision width 32 (2 layers, 64 px input, patch 16), prompt/mask
decoder width 16. Its masks are random but come out of the real SAM code path (box prompt, mask decoder,
post-processing to the image size)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

TINY_SAM_IMAGE = 64


def write_tiny_sam(folder, seed: int = 0) -> Path:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
    folder = Path(folder)
    config = SamConfig(
        vision_config={"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": TINY_SAM_IMAGE, "patch_size": 16, "window_size": 2, "global_attn_indexes": [1],
                       "mlp_dim": 64, "num_pos_feats": 8},
        prompt_encoder_config={"hidden_size": 16, "image_size": TINY_SAM_IMAGE, "patch_size": 16,
                               "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "iou_head_hidden_dim": 16},
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    with torch.no_grad():                     # SAM's init is near zero (std 1e-10); make the outputs vary
        for p in model.parameters():
            if p.dim() > 1 and p.abs().max() < 1e-6:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    image_processor = SamImageProcessorPil(size={"longest_edge": TINY_SAM_IMAGE},
                                           pad_size={"height": TINY_SAM_IMAGE, "width": TINY_SAM_IMAGE},
                                           mask_size={"longest_edge": TINY_SAM_IMAGE // 4},
                                           mask_pad_size={"height": TINY_SAM_IMAGE // 4,
                                                          "width": TINY_SAM_IMAGE // 4})
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=1)
def tiny_sam_folder() -> Path:
    """One tiny SAM folder per process (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="tiny-sam-"))
    atexit.register(shutil.rmtree, root, True)
    return write_tiny_sam(root / "sam")


def reference_box_mask(folder, frame: torch.Tensor, box) -> torch.Tensor:
    """SAM's mask of ``box`` in ``frame`` ([H, W, 3] 0..1) computed straight through transformers (the
    reference the tests hold comfy_kiwi's segmenter to): best of the three candidates by predicted IoU,
    limited to the box."""
    from PIL import Image
    from transformers import SamModel, SamProcessor
    model = SamModel.from_pretrained(folder, local_files_only=True).eval()
    processor = SamProcessor.from_pretrained(folder, local_files_only=True)
    image = Image.fromarray((frame * 255).round().to(torch.uint8).numpy())
    inputs = processor(images=image, input_boxes=[[box.as_list()]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    best = masks[0][0, int(out.iou_scores[0, 0].argmax())].float()
    inside = torch.zeros_like(best)
    inside[box.y0:box.y1, box.x0:box.x1] = 1
    return best * inside
