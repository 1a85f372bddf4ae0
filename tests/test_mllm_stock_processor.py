"""Our prompt/pixel path against transformers' own Qwen2.5-VL processor.

The stock video processor needs torchvision, which this project does not depend on, so this file
is skipped where torchvision is missing (CI); it runs in a ComfyUI environment. It also pins the
transformers-5 trap: given bare frames the processor assumes fps 24 (second_per_grid_ts 1/12)
unless fps-2.0 metadata is passed, while the released code got 2.0 (second_per_grid_ts 1.0).
"""

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

from comfy_kiwi.mllm.loader import load_mllm_encoder  # noqa: E402
from comfy_kiwi.mllm.preprocess import (frames_to_uint8, pil_resize, select_frame_indices, smart_resize,  # noqa: E402
                                        tensor_resize_uint8, video_resize_plan)
from comfy_kiwi.mllm.prompt import build_messages  # noqa: E402
from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoProcessor
    files = tiny_kiwi_files()
    enc = load_mllm_encoder(files.release)
    proc = AutoProcessor.from_pretrained(str(files.release / "processor"), local_files_only=True)
    return enc, proc


def test_step3_resize_is_torchvisions():
    stack = torch.randint(0, 256, (2, 3, 728, 1288), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tv = TF.resize(stack, [560, 1008], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    torch.testing.assert_close(tensor_resize_uint8(stack, 560, 1008), tv, rtol=0, atol=0)


@pytest.mark.parametrize("n_frames,size,with_ref", [(1, (70, 110), False), (16, (224, 448), False),
                                                    (5, (100, 150), True), (81, (120, 200), False)])
def test_same_ids_and_pixels_as_stock_processor(setup, n_frames, size, with_ref):
    from transformers.video_utils import VideoMetadata
    enc, proc = setup
    g = torch.Generator().manual_seed(n_frames)
    src = torch.rand(n_frames, *size, 3, generator=g)
    ref = torch.rand(1, 50, 80, 3, generator=g) if with_ref else None
    mode, vision = enc.prepare_vision(src, ref)
    messages = build_messages(mode, "make it red", enc.config)
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert enc.processor.render(messages) == text
    # the released steps 1-3 (qwen_vl_utils), fed to the stock processor for step 4
    u8 = frames_to_uint8(src)
    images = videos = None
    if mode == "image":
        h, w = smart_resize(size[0], size[1], 28, 4 * 784, 16384 * 784)
        images = [Image.fromarray(pil_resize(u8[0], h, w))]
    else:
        idx = select_frame_indices(n_frames, 16)
        (h2, w2), (h3, w3) = video_resize_plan(size[0], size[1], 262144, len(idx))
        stack = torch.from_numpy(np.stack([pil_resize(fr, h2, w2) for fr in u8[idx]])).permute(0, 3, 1, 2)
        videos = [TF.resize(stack, [h3, w3], interpolation=InterpolationMode.BICUBIC, antialias=True).float()]
        if mode == "reference":
            h, w = smart_resize(50, 80, 28, 4 * 784, 28 * 28 * 768)
            images = [Image.fromarray(pil_resize(frames_to_uint8(ref)[0], h, w))]
    kwargs = {"do_sample_frames": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if videos:
            bare = proc(text=[text], images=images, videos=videos, return_tensors="pt", **kwargs)
            assert bare["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])       # fps 24 default
            kwargs["video_metadata"] = [VideoMetadata(total_num_frames=len(videos[0]), fps=2.0)]
        out = proc(text=[text], images=images, videos=videos, return_tensors="pt", **kwargs)
    assert torch.equal(out["input_ids"], enc.prompt_ids(mode, "make it red", vision))
    if images:
        assert torch.equal(out["image_grid_thw"], vision.image_grid_thw)
        torch.testing.assert_close(out["pixel_values"], vision.pixel_values, rtol=0, atol=2e-6)
    if videos:
        assert torch.equal(out["video_grid_thw"], vision.video_grid_thw)
        torch.testing.assert_close(out["pixel_values_videos"], vision.pixel_values_videos, rtol=0, atol=2e-6)
        assert out["second_per_grid_ts"].tolist() == vision.second_per_grid_ts == [1.0]
