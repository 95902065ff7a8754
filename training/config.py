"""QW-Net configuration: model shape, quantization plan (bit widths) and training settings, loaded from YAML.

A config file is a mapping with up to three sections, ``model``, ``quant`` and ``train``; every key has a default
here. ``load_config`` accepts a preset name (``paper``, the default, or ``intel-sample``; files in
``training/configs/``) or a path to a YAML file. A file may name a preset to start from with ``preset: NAME``
and then override single keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qw.datagen.errors import QwError

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "paper"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # `lr: .nan` is refused at load, not trained on


class ModelConfig(_Strict):
    """The network's shape. Changing any field changes the parameter layout of a checkpoint."""

    input_processing: bool = Field(True, description="add grayscale and gradient magnitude of input and history")
    norm: Literal["batch", "group", "none"] = Field(
        "batch", description="after each U_e conv: BatchNorm (folded into the conv for quantization), GroupNorm "
                             "(per-image statistics; float only: it cannot be folded) or none (the conv has a bias)")
    bn_momentum: float | None = Field(0.1, gt=0, le=1, description="BatchNorm running-statistics momentum (None: "
                                                                  "the cumulative mean of every batch seen)")
    jitter_input: bool = Field(False, description="give U_e each frame's sample offset (jitter + 0.5, in [0, 1]) as "
                                                  "two constant input channels")
    activation: Literal["elu", "relu"] = "elu"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 96, 128, 160],
                              description="U_e channel widths, full resolution first; the last is the bottleneck")
    decoder_convs: list[int] = Field(default_factory=lambda: [1, 1, 1, 1],
                                     description="3x3 convs after each decoder 1x1 projection, full resolution first")
    hdr: Literal["log1p", "reinhard", "pq", "none"] = Field("log1p",
                                                            description="range compression for U_e and the loss")
    kernel_padding: Literal["replicate", "zeros"] = Field("replicate", description="U_f's kernels at the border")
    input_kernel: Literal[3, 5] = Field(3, description="size of U_f's full-resolution kernels on the current frame "
                                                       "and the history (the paper's 3x3; 5x5 reaches twice as far)")
    input_kernel_lobe: float = Field(
        0.0, ge=0, description="λ: U_f's full-resolution weights become (1 + λ)·softmax − λ/n (n weights, "
                                     "still summing to 1), so a tap can go down to −λ/n and the kernel can sharpen "
                                     "the resampled history; 0 is the paper's convex kernels. The output is clamped "
                                     "at 0 when λ > 0")
    warp_padding: Literal["border", "zeros"] = Field("border", description="history samples outside the frame")
    warp_filter: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="how the history is resampled: bilinear (the paper's) or bicubic, which keeps its "
                                "detail under motion (clamped at 0)")
    temporal_reset_term: bool = Field(False, description="temporal loss |out - in| on steps without history")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two scales")
        if len(self.decoder_convs) != len(self.widths) - 1:
            raise ValueError(f"decoder_convs needs {len(self.widths) - 1} entries (one per decoder scale), "
                             f"got {len(self.decoder_convs)}")
        if min(self.widths) < 1 or min(self.decoder_convs) < 1:
            raise ValueError("widths and decoder_convs must be positive")
        return self

    @property
    def num_scales(self) -> int:
        return len(self.widths)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one 2x2 pool per scale below full resolution)."""
        return 2 ** (self.num_scales - 1)


# The bit widths the quantizer, the `.qwq` format and the ONNX exporter implement: 4- and 8-bit integers (int4 /
# int8 storage and types), 16 = rounding to float16, 32 = float (no quantization).
INTEGER_BITS = (4, 8)
Bits = Literal[4, 8, 16, 32]


class QuantConfig(_Strict):
    """Bit widths of the quantization plan (the paper's): U_e 4/4, first conv 8-bit in/weights, predictors 8-bit."""

    extractor_weight_bits: Bits = 4
    extractor_act_bits: Bits = 4
    first_weight_bits: Bits = 8
    first_input_bits: Bits = 8
    predictor_weight_bits: Bits = 8


class TrainConfig(_Strict):
    """Optimization and bookkeeping. Global batch = batch_size × grad_accum, at any world size: under DDP each of
    W processes accumulates grad_accum / W micro-batches (refused when W does not divide it)."""

    steps: int = Field(100_000, ge=1)
    lr: float = Field(5e-4, gt=0, description="peak learning rate (after warm-up)")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "constant", description="after warm-up: constant, cosine decay to final_lr_ratio·lr at `steps`, or ×gamma at "
                                "each of `milestones`")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up: optimizer step k <= warmup_steps uses lr·k/warmup_steps")
    final_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine and decay_steps: the last step's lr as a "
                                                               "fraction of lr")
    milestones: list[int] = Field(default_factory=list, description="step: optimizer steps after which lr ×= gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="step: decay factor per milestone")
    decay_steps: int = Field(0, ge=0, description="constant: the last decay_steps steps decay lr linearly to "
                                                  "final_lr_ratio·lr (warm-up, stable, decay); a constant-rate run "
                                                  "resumed with more steps and a decay anneals from its checkpoint")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient L2 norm to this (None: off)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an EMA of the weights (e.g. 0.999); when set "
                                                                  "validation, best.pt and every checkpoint's model use it")
    batch_size: int = Field(8, ge=1, description="blocks per micro-batch per process")
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step on one process (divided among "
                                                 "DDP processes)")
    global_batch: int | None = Field(None, ge=1, exclude=True,  # recorded as the grad_accum it sets
                                     description="blocks per optimizer step; sets grad_accum = global_batch / batch_size")
    crop: int | None = Field(None, ge=1, description="random square crop of each block (None: the whole 256x256 tile)")
    loss_domain: Literal["model", "display"] = Field(
        "model", description="where the L1 loss compares images: the model's range compression (model.hdr) or the "
                             "display tone map that PSNR, SSIM and tPSNR are computed in (Reinhard + gamma 2.2)")
    spatial_weight: float = Field(0.3, ge=0)
    spatial_norm: Literal["l1", "rmse"] = Field(
        "l1", description="the per-frame term: L1 (the paper's) or each frame's RMSE, whose optimum is the mean that "
                          "PSNR rewards where L1's is the median")
    temporal_weight: float = Field(0.7, ge=0)
    augment: bool = True
    exposure_range: tuple[float, float] = (0.5, 2.0)
    augment_on: Literal["auto", "worker", "device"] = Field(
        "auto", description="where flips, quarter turns and exposure run: in the DataLoader workers, or on the "
                            "collated batch on the training device (same bits either way); auto: device on CUDA")
    num_workers: int = Field(4, ge=0)
    seed: int = Field(0, ge=0, lt=2**63)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="auto: bf16 on GPU, off on CPU")
    channels_last: bool = True
    compile: bool = False
    log_every: int = Field(10, ge=1)
    val_every: int = Field(1000, ge=1)
    val_blocks: int = Field(64, ge=0, description="validation blocks evaluated per validation (0: none)")
    val_images: int = Field(2, ge=0, description="validation blocks shown in TensorBoard and scored with FLIP")
    ckpt_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1, description="step checkpoints kept besides last.pt and best.pt")
    ddp_timeout_s: float = Field(1800.0, gt=0, description="a DDP collective waiting longer for a peer fails the run")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        low, high = self.exposure_range
        if not 0 < low <= high:
            raise ValueError(f"exposure_range must satisfy 0 < low <= high, got {list(self.exposure_range)}")
        if self.spatial_weight + self.temporal_weight <= 0:
            raise ValueError("spatial_weight + temporal_weight must be positive")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be less than steps ({self.steps})")
        if self.milestones != sorted(set(self.milestones)) or any(m <= self.warmup_steps for m in self.milestones):
            raise ValueError(f"milestones must increase and lie after warmup_steps, got {self.milestones}")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones")
        if self.decay_steps and self.schedule != "constant":
            raise ValueError(f"decay_steps is a decay of the constant schedule, not of {self.schedule!r}")
        if self.warmup_steps + self.decay_steps > self.steps:
            raise ValueError(f"warmup_steps + decay_steps ({self.warmup_steps} + {self.decay_steps}) exceed steps "
                             f"({self.steps})")
        if self.global_batch is not None:
            accum, rest = divmod(self.global_batch, self.batch_size)
            if rest:
                raise ValueError(f"global_batch {self.global_batch} is not a multiple of batch_size {self.batch_size}")
            if "grad_accum" in self.model_fields_set and self.grad_accum != accum:
                raise ValueError(f"grad_accum {self.grad_accum} contradicts global_batch {self.global_batch} / "
                                 f"batch_size {self.batch_size}; set one of them")
            self.grad_accum = accum
        return self

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of `world_size` processes, keeping the global batch fixed."""
        per_process, rest = divmod(self.grad_accum, world_size)
        if rest or per_process == 0:
            raise QwError(f"global batch {self.effective_batch} (batch_size {self.batch_size} × grad_accum "
                          f"{self.grad_accum}) cannot be split over {world_size} processes: make grad_accum a "
                          f"multiple of {world_size}")
        return per_process


@dataclass(frozen=True)
class LossSpec:
    """The loss as a training step computes it (`Config.loss`): the domain it compares images in (a `model.hdr`
    transform or ``display``), the weights of its per-frame and frame-to-frame terms, the per-frame term's norm."""

    transform: str = "log1p"
    spatial_weight: float = 0.3
    temporal_weight: float = 0.7
    spatial_norm: str = "l1"


class Config(_Strict):
    preset: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _crop_fits_the_model(self) -> "Config":
        crop, multiple = self.train.crop, self.model.size_multiple
        if crop is not None and crop % multiple:
            raise ValueError(f"train.crop {crop} must be a multiple of {multiple} (the "
                             f"{self.model.num_scales}-scale model halves it {self.model.num_scales - 1} times)")
        return self

    @property
    def loss_transform(self) -> str:
        """The transform the loss compares images in: ``display`` or the model's range compression."""
        return "display" if self.train.loss_domain == "display" else self.model.hdr

    @property
    def loss(self) -> LossSpec:
        t = self.train
        return LossSpec(self.loss_transform, t.spatial_weight, t.temporal_weight, t.spatial_norm)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise QwError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(data, dict):
        raise QwError(f"{path}: a config must be a mapping with sections model/quant/train")
    return data


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``train.lr: Input should be greater than 0 (got nan)``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        got = f" (got {error['input']!r})" if error["type"] != "missing" and not isinstance(error["input"], dict) else ""
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where + ': ' if where else ''}{message}{got}")
    return "; ".join(parts)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.widths=[8, 16]"]`` as nested overrides; each value is read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise QwError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise QwError(f"--set {item!r}: value is not YAML ({str(exc).splitlines()[0]})") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise QwError(f"--set {item!r}: {part} was already set to a value")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`_merge`, where an override of global_batch or grad_accum replaces the other one from `base` (one sets the
    other, so keeping the base's would contradict the override)."""
    train = override.get("train")
    if isinstance(train, dict) and isinstance(base.get("train"), dict):
        for key, other in (("global_batch", "grad_accum"), ("grad_accum", "global_batch")):
            if key in train and other not in train:
                base = {**base, "train": {k: v for k, v in base["train"].items() if k != other}}
    return _merge(base, override)


def validated_config(data: Any, origin: str) -> Config:
    """`data` as a Config; invalid data is one QwError line that starts with `origin`."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise QwError(f"{origin}: invalid config: {validation_message(exc)}") from None


def apply_overrides(cfg: Config, overrides: dict[str, Any], origin: str) -> Config:
    """`cfg` with nested overrides (e.g. from `parse_overrides`), validated like a config file."""
    return validated_config(_merge_config(cfg.model_dump(mode="json"), overrides), f"{origin} with overrides") \
        if overrides else cfg


def load_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """A config from a preset name or a YAML path (None: the default preset), with optional nested overrides."""
    source = str(source or DEFAULT_PRESET)
    if source in presets():
        path, data = PRESET_DIR / f"{source}.yaml", {"preset": source}
    else:
        path, data = Path(source), {}
        if not path.is_file():
            raise QwError(f"{source}: no such config file and not a preset (presets: {', '.join(presets())})")
    data = _merge(data, _read_yaml(path))
    base = data.get("preset")
    if base and base != source and base in presets():
        data = _merge(_read_yaml(PRESET_DIR / f"{base}.yaml"), data)
    elif base and base not in presets():
        raise QwError(f"{path}: unknown preset {base!r} (presets: {', '.join(presets())})")
    return validated_config(_merge_config(data, overrides or {}), f"{path} with overrides" if overrides else str(path))
