"""Settings of the MLLM instruction encoder (Qwen2.5-VL + learnable queries + connectors).

The defaults are the released Kiwi-Edit values (``KIWI_EDIT``); ``INSTRUCTX`` is the same family
without the reference branch (a reference image only joins the prompt) and with 13 MLLM frames. A
Kiwi release stores a subset of these in ``mllm_encoder/config.json``;
:meth:`MLLMEncoderConfig.from_release_json` / :meth:`to_release_json` read and write exactly those keys, plus
``reference_without_branch`` for an encoder without a reference branch when it is not Kiwi-Edit's "none" (an InstructX
export records "video"); a file without the key, as every Kiwi-Edit release, keeps the preset's value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import CheckpointError, InputError

SYSTEM_PROMPT = ("You will be given an image and instruction. Please describe the content of the image in "
                 "detail based on instruction in your own words.")
REFERENCE_SUFFIX = " Use the reference input from last frame."
PLACEHOLDER_TOKEN = "<|object_ref_start|>"

# Keys of a release's mllm_encoder/config.json that map onto our fields (same names).
_RELEASE_KEYS = ("num_image_queries", "num_video_queries", "num_ref_queries", "max_frames",
                 "max_pixels_per_frame", "dit_dim", "hidden_size")


@dataclass
class MLLMEncoderConfig:
    num_image_queries: int = 256
    num_video_queries: int = 512
    num_ref_queries: int = 768
    use_ref_connector: bool = True
    # How a reference image reaches the context when the encoder has no reference branch: "none" refuses it
    # (Kiwi instruct-only); "video" (InstructX) puts it in the prompt after the source video, the video
    # queries read both, and the context is the connector output of those queries alone.
    reference_without_branch: str = "none"
    # Frames the MLLM sees: linspace(0, n-1, max_frames).round() when the source is longer.
    max_frames: int = 16
    # Per-frame pixel cap of the video (inference value; the 5B training scripts left it None,
    # which means the processor's own cap of 768*28*28 = 602112 applies).
    max_pixels_per_frame: int | None = 262144
    # Reference image cap: 28*28*max_object_token (max_object_token 768 in the release).
    ref_max_pixels: int = 28 * 28 * 768
    # The released frames go through fetch_image with factor 56 (patch size 28 passed by mistake).
    frame_resize_factor: int = 56
    # No fps reached the released processor, so it used 2.0: second_per_grid_ts = 2 / 2.0 = 1.0.
    video_fps: float = 2.0
    hidden_size: int = 2048
    dit_dim: int = 3072
    system_prompt: str = SYSTEM_PROMPT
    reference_suffix: str = REFERENCE_SUFFIX
    placeholder_token: str = PLACEHOLDER_TOKEN
    name: str = field(default="kiwi-edit", compare=False)

    def __post_init__(self):
        for key in ("num_image_queries", "num_video_queries", "max_frames", "hidden_size", "dit_dim",
                    "frame_resize_factor"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"MLLM encoder config: {key} must be a positive integer, got {value!r}.")
        if self.num_ref_queries < 0:
            raise InputError(f"MLLM encoder config: num_ref_queries must be >= 0, got {self.num_ref_queries}.")
        if self.max_pixels_per_frame is not None and self.max_pixels_per_frame <= 0:
            raise InputError("MLLM encoder config: max_pixels_per_frame must be positive or None (no cap).")
        if self.reference_without_branch not in ("none", "video"):
            raise InputError("MLLM encoder config: reference_without_branch must be \"none\" or \"video\", got "
                             f"{self.reference_without_branch!r}.")
        if self.video_fps <= 0:
            raise InputError(f"MLLM encoder config: video_fps must be positive, got {self.video_fps}.")

    @property
    def has_reference(self) -> bool:
        """True when the encoder has a reference branch (ref queries + ref connector)."""
        return self.use_ref_connector and self.num_ref_queries > 0

    @property
    def accepts_reference(self) -> bool:
        """True when a reference image can be encoded: through the reference branch, or (InstructX) in the prompt."""
        return self.has_reference or self.reference_without_branch != "none"

    def replace(self, **changes) -> MLLMEncoderConfig:
        return dataclasses.replace(self, **changes)

    # Release config.json --------------------------------------------------------------------
    @classmethod
    def from_release_json(cls, data: dict, base: MLLMEncoderConfig | None = None,
                          source: str = "config.json") -> MLLMEncoderConfig:
        """Our config from a release's ``mllm_encoder/config.json`` dict (unknown keys ignored)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        base = base or KIWI_EDIT
        changes = {k: data[k] for k in _RELEASE_KEYS if k in data}
        if "reference_without_branch" in data:
            changes["reference_without_branch"] = data["reference_without_branch"]
            if data["reference_without_branch"] != "none" and data.get("num_ref_queries", 0):
                raise CheckpointError(
                    f"{source}: reference_without_branch is {data['reference_without_branch']!r} (a reference joins "
                    f"the prompt of an encoder without a reference branch) but num_ref_queries is "
                    f"{data['num_ref_queries']} (a reference branch); an InstructX encoder has num_ref_queries 0, a "
                    "Kiwi-Edit one has no reference_without_branch key.")
        if "max_object_token" in data:
            changes["ref_max_pixels"] = 28 * 28 * int(data["max_object_token"])
        try:
            return base.replace(**changes)
        except (TypeError, InputError) as e:
            raise CheckpointError(f"{source}: invalid MLLM encoder settings ({e}).") from None

    def to_release_json(self) -> dict:
        out = {"_class_name": "MLLMEncoder", "mllm_model_path": "."}
        out.update({k: getattr(self, k) for k in _RELEASE_KEYS})
        out["max_object_token"] = self.ref_max_pixels // (28 * 28)
        out.update(self.reference_setting())
        return out

    def reference_setting(self) -> dict:
        """What a saved encoder records about a reference beyond the release keys: ``{"reference_without_branch":
        "video"}`` for an encoder without a reference branch that still takes one (InstructX), else ``{}``, so
        Kiwi-Edit files stay as the release writes them."""
        if self.reference_without_branch != "none" and not self.has_reference:
            return {"reference_without_branch": self.reference_without_branch}
        return {}


KIWI_EDIT = MLLMEncoderConfig()

# InstructX: no reference queries or connector; a reference image joins the MLLM prompt (its VAE latents
# join the DiT sequence through the reference embedder)
INSTRUCTX = MLLMEncoderConfig(num_image_queries=256, num_video_queries=512, num_ref_queries=0,
                              use_ref_connector=False, reference_without_branch="video", max_frames=13,
                              name="instructx")

PRESETS: dict[str, MLLMEncoderConfig] = {"kiwi-edit": KIWI_EDIT, "instructx": INSTRUCTX}


def get_preset(name: str | MLLMEncoderConfig | None) -> MLLMEncoderConfig:
    """A preset by name (``kiwi-edit``/``instructx``), or the config itself."""
    if name is None:
        return KIWI_EDIT
    if isinstance(name, MLLMEncoderConfig):
        return name
    key = str(name).lower().replace("_", "-")
    if key not in PRESETS:
        raise InputError(f"unknown MLLM encoder preset {name!r}; known: {', '.join(PRESETS)}.")
    return PRESETS[key]
