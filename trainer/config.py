"""Training configuration: TOML → typed dataclasses, validated before anything is loaded.

Every section is a dataclass; unknown keys, wrong types and missing files are reported together with
the section and the accepted keys. Method-specific options live in ``[method.options]`` and are checked
against the method's own ``Options`` dataclass (see trainer/methods/base.py).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from comfy_kiwi.errors import InputError

PRECISIONS = ("no", "bf16", "fp16")
DTYPES = ("fp32", "bf16", "fp16")
DATA_FORMATS = ("image_pairs", "kiwi")
LR_SCHEDULES = ("warmup_then_constant", "kiwi_constant")   # kiwi_constant: torch ConstantLR defaults (1/3 for 5 steps)


@dataclass
class ModelConfig:
    dit: str = ""                     # Wan DiT file or folder (any layout load_dit reads)
    vae: str = ""                     # Wan VAE file or folder
    text_encoder: str = ""            # umT5 folder (UMT5EncoderModel + tokenizer)
    dtype: str = "bf16"               # storage dtype of the frozen base DiT
    attention: str = "auto"
    mllm: str = ""                    # Qwen2.5-VL folder or Kiwi-Edit release (methods with an MLLM encoder)
    mllm_preset: str = "kiwi-edit"    # comfy_kiwi.mllm.config preset: kiwi-edit | instructx


@dataclass
class DataConfig:
    dataset: str = ""                 # CSV or JSONL
    format: str = "image_pairs"       # image_pairs: source,target,source_prompt,prompt; kiwi: src_video,tgt_video,prompt
    resolution: int = 480             # bucket area = resolution², sides multiples of `multiple`
    multiple: int = 16
    max_aspect: float = 2.0
    frames: int = 1                   # kiwi format: frames per clip (4k+1)
    text_len: int = 512               # umT5 context zero-padded to this many tokens (as Wan does)
    cache_dir: str = ""               # default: <output_dir>/cache
    max_pixels: int = 0               # > 0: per-item size as the Kiwi loader (≤ max_pixels, sides × multiple)
                                      # instead of resolution² buckets
    datasets: list = field(default_factory=list)     # several datasets: [[data.datasets]] tables with
                                      # dataset (path) and optional format, frames, max_pixels, name, base_path
    mix_weights: list = field(default_factory=list)  # one weight per dataset ([2, 1, 1]); empty = round robin


@dataclass
class DatasetSpec:
    """One dataset of a (possibly mixed) run; unset fields take the [data] values."""
    dataset: str = ""
    format: str = ""
    frames: int = 0
    max_pixels: int = -1
    name: str = ""
    base_path: str = ""               # the CSV's paths are relative to this folder (default: the CSV's folder)


@dataclass
class MethodConfig:
    name: str = "imvideoedit"
    options: dict = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0        # 0 = no clipping
    ema_decay: float = 0.0            # > 0: keep an EMA of the trained weights (trainer/ema.py); 0 = off


@dataclass
class ScheduleConfig:
    max_steps: int = 1000             # optimiser steps of the schedule (LR tail, final export)
    stop_at: int = 0                  # > 0: end this run after that many steps with a checkpoint, schedule unchanged
    warmup_steps: int = 0             # linear warm-up from 0, then constant
    batch_size: int = 1               # per process, per micro-step
    grad_accum: int = 0               # 0 = one micro-step per dataset (1 for a single dataset; Kiwi's rule)
    lr_schedule: str = "warmup_then_constant"   # or "kiwi_constant": ConstantLR factor 1/3 for 5 steps
    decay_share: float = 0.0          # the LR falls linearly to 5 % over this last share of max_steps (0: never)
    timestep_shift: float = 5.0       # shift of the 1000-step training schedule
    seed: int = 0


@dataclass
class PrecisionConfig:
    mixed: str = "no"                 # autocast: no | bf16 | fp16
    gradient_checkpointing: bool = False
    adapter_dtype: str = "fp32"       # trainable weights (and their AdamW states)


@dataclass
class CheckpointConfig:
    output_dir: str = "runs/train"
    every: int = 500
    keep: int = 3                     # newest checkpoints kept (0 = all)
    init_from: str = ""               # a previous stage's final .safetensors (or checkpoint folder): initial
                                      # trainable weights, loaded non-strictly (stage 2 starts from stage 1)


@dataclass
class SamplingConfig:
    every: int = 0                    # 0 = never
    count: int = 1                    # first N dataset items are edited
    steps: int = 20
    shift: float = 5.0
    seed: int = 0


@dataclass
class LoggingConfig:
    every: int = 1
    tensorboard: bool = True          # when the tensorboard package is installed
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = ""                  # the TOML file (set by load_config)

    @property
    def output_dir(self) -> Path:
        return Path(self.checkpoint.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else self.output_dir / "cache"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dataset_specs(self) -> list[DatasetSpec]:
        """The datasets of the run with defaults filled in: ``data.datasets`` or the single ``data.dataset``."""
        d = self.data
        tables = d.datasets or [{"dataset": d.dataset}]
        out = []
        for i, table in enumerate(tables):
            spec = table if isinstance(table, DatasetSpec) else build_dataclass(DatasetSpec, table,
                                                                                f"data.datasets[{i}]")
            out.append(DatasetSpec(spec.dataset, spec.format or d.format, spec.frames or d.frames,
                                   d.max_pixels if spec.max_pixels < 0 else spec.max_pixels,
                                   spec.name or Path(spec.dataset).stem or f"dataset{i}", spec.base_path))
        return out


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp) or tp
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


def build_dataclass(cls, table, where: str):
    """``cls(**table)`` with named errors for unknown keys and wrong types (nested dataclasses recurse)."""
    if not isinstance(table, dict):
        raise InputError(f"[{where}] must be a table, got {type(table).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in [{where}]; accepted: {', '.join(names)}.")
    values = {}
    for name, value in table.items():
        tp = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            values[name] = build_dataclass(tp, value, label)
        elif not _type_ok(value, tp):
            raise InputError(f"{label} must be {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}.")
        else:
            values[name] = float(value) if tp is float else value
    return cls(**values)


def _choice(value, choices, label):
    if value not in choices:
        raise InputError(f"{label} is {value!r}; choose one of {', '.join(choices)}.")


def _positive(value, label, zero_ok=False):
    if value < 0 or (value == 0 and not zero_ok):
        raise InputError(f"{label} must be {'≥ 0' if zero_ok else '> 0'}, got {value!r}.")


def validate(cfg: TrainConfig, check_files: bool = True) -> TrainConfig:
    """Value checks (choices, ranges, files). Raises InputError naming the key."""
    for section in dataclasses.fields(cfg):        # NaN / inf pass every range check below: name them first
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ():
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{section.name}.{f.name} must be a finite number, got {value!r}.")
            if isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:     # TOML allows any size
                raise InputError(f"{section.name}.{f.name} = {value} does not fit a 64-bit integer.")
    _choice(cfg.precision.mixed, PRECISIONS, "precision.mixed")
    _choice(cfg.precision.adapter_dtype, DTYPES, "precision.adapter_dtype")
    _choice(cfg.model.dtype, DTYPES, "model.dtype")
    _choice(cfg.data.format, DATA_FORMATS, "data.format")
    _choice(cfg.schedule.lr_schedule, LR_SCHEDULES, "schedule.lr_schedule")
    from comfy_kiwi.mllm.config import PRESETS as MLLM_PRESETS
    _choice(cfg.model.mllm_preset, tuple(MLLM_PRESETS), "model.mllm_preset")
    for label, v, zero_ok in (("schedule.max_steps", cfg.schedule.max_steps, False),
                              ("schedule.batch_size", cfg.schedule.batch_size, False),
                              ("schedule.grad_accum", cfg.schedule.grad_accum, True),
                              ("schedule.stop_at", cfg.schedule.stop_at, True),
                              ("schedule.warmup_steps", cfg.schedule.warmup_steps, True),
                              ("optimizer.lr", cfg.optimizer.lr, False),
                              ("optimizer.weight_decay", cfg.optimizer.weight_decay, True),
                              ("optimizer.max_grad_norm", cfg.optimizer.max_grad_norm, True),
                              ("checkpoint.every", cfg.checkpoint.every, False),
                              ("checkpoint.keep", cfg.checkpoint.keep, True),
                              ("sampling.every", cfg.sampling.every, True),
                              ("data.resolution", cfg.data.resolution, False),
                              ("data.text_len", cfg.data.text_len, False)):
        _positive(v, label, zero_ok)
    if not 0 <= cfg.optimizer.ema_decay < 1:
        raise InputError(f"optimizer.ema_decay must be in [0, 1) (0 = no EMA; 0.999 is usual), got "
                         f"{cfg.optimizer.ema_decay!r}.")
    if not 0 <= cfg.schedule.decay_share < 1:
        raise InputError(f"schedule.decay_share must be in [0, 1), got {cfg.schedule.decay_share!r}.")
    if len(cfg.optimizer.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1
                                                 for b in cfg.optimizer.betas):
        raise InputError(f"optimizer.betas must be two numbers in [0, 1), got {cfg.optimizer.betas!r}.")
    if cfg.data.frames % 4 != 1:
        raise InputError(f"data.frames must be 4k+1 (1, 5, 9, …), got {cfg.data.frames}.")
    if cfg.data.multiple % 16:
        raise InputError(f"data.multiple must be a multiple of 16 (VAE ×8 and patch ×2), got {cfg.data.multiple}.")
    specs = cfg.dataset_specs()
    for i, spec in enumerate(specs):
        _choice(spec.format, DATA_FORMATS, f"data.datasets[{i}].format")
        if spec.frames % 4 != 1:
            raise InputError(f"data.datasets[{i}].frames must be 4k+1 (1, 5, 9, …), got {spec.frames}.")
    weights = cfg.data.mix_weights
    if weights and (len(weights) != len(specs) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                           and w > 0 for w in weights)):
        raise InputError(f"data.mix_weights must hold one positive number per dataset ({len(specs)}), got "
                         f"{weights!r}.")
    from .methods import get_method        # the method validates its own options
    method_cls = get_method(cfg.method.name)
    cfg.method.options = method_cls.parse_options(cfg.method.options)
    if check_files:
        files = [(f"model.{name}", getattr(cfg.model, name)) for name in method_cls.required_models]
        files += [("data.dataset" if not cfg.data.datasets else f"data.datasets[{i}].dataset", s.dataset)
                  for i, s in enumerate(specs)]
        if cfg.checkpoint.init_from:
            files.append(("checkpoint.init_from", cfg.checkpoint.init_from))
        for label, path in files:
            if not path:
                raise InputError(f"{label} is required (a path).")
            if not Path(path).exists():
                how = f" or with --set {label}=PATH" if "[" not in label else ""
                raise InputError(f"{label}: {path} does not exist; point it at your file in the TOML{how}.")
    return cfg


# keys holding a path; relative ones are relative to the TOML's folder (command-line overrides: to the shell's)
PATH_KEYS = (("model", "dit"), ("model", "vae"), ("model", "text_encoder"), ("model", "mllm"), ("data", "dataset"),
             ("data", "cache_dir"), ("checkpoint", "output_dir"), ("checkpoint", "init_from"))


def _merge(table: dict, overrides: dict) -> None:
    """Nested update: {"method": {"options": {"x": 1}}} changes one option and keeps the others."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            _merge(table[key], value)
        else:
            table[key] = value


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if value and not Path(value).is_absolute() else value


def load_config(path, overrides: dict | None = None, check_files: bool = True, base=None) -> TrainConfig:
    """Read and validate a TOML config. Relative paths are relative to ``base`` (default: the TOML's folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist.")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         "a TOML config must be saved as UTF-8.") from None
    _merge(table, overrides or {})
    try:
        cfg = build_dataclass(TrainConfig, table, "")
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    base = Path(base) if base is not None else path.parent
    for sect, key in PATH_KEYS:
        obj = getattr(cfg, sect)
        setattr(obj, key, _resolve(base, getattr(obj, key)))
    for table in cfg.data.datasets:
        for key in ("dataset", "base_path"):
            if isinstance(table, dict) and isinstance(table.get(key), str):
                table[key] = _resolve(base, table[key])
    cfg.source = str(path)
    try:
        return validate(cfg, check_files)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
