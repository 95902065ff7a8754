"""QW-Net configuration: model shape, quantization plan (bit widths) and training settings, loaded from YAML.

A config file is a mapping with up to three sections, ``model``, ``quant`` and ``train``; every key has a default
here. ``load_config`` accepts a preset name (``paper``, the default, or ``intel-sample``; files in
``training/configs/``) or a path to a YAML file. A file may name a preset to start from with ``preset: NAME``
and then override single keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datagen.errors import QwError

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "paper"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """The network's shape. Changing any field changes the parameter layout of a checkpoint."""

    input_processing: bool = Field(True, description="add grayscale and gradient magnitude of input and history")
    norm: Literal["batch", "none"] = "batch"
    activation: Literal["elu", "relu"] = "elu"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 96, 128, 160],
                              description="U_e channel widths, full resolution first; the last is the bottleneck")
    decoder_convs: list[int] = Field(default_factory=lambda: [1, 1, 1, 1],
                                     description="3x3 convs after each decoder 1x1 projection, full resolution first")
    hdr: Literal["log1p", "reinhard", "pq", "none"] = Field("log1p",
                                                            description="range compression for U_e and the loss")
    kernel_padding: Literal["replicate", "zeros"] = Field("replicate", description="U_f's 3x3 kernels at the border")
    warp_padding: Literal["border", "zeros"] = Field("border", description="history samples outside the frame")
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


class QuantConfig(_Strict):
    """Bit widths of the quantization plan (the paper's): U_e 4/4, first conv 8-bit in/weights, predictors 8-bit."""

    extractor_weight_bits: int = 4
    extractor_act_bits: int = 4
    first_weight_bits: int = 8
    first_input_bits: int = 8
    predictor_weight_bits: int = 8


class TrainConfig(_Strict):
    """Optimization and bookkeeping. Effective batch = batch_size × grad_accum × world size."""

    steps: int = 100_000
    lr: float = 5e-4
    batch_size: int = Field(8, description="blocks per micro-batch per process")
    grad_accum: int = Field(8, description="micro-batches per optimizer step")
    crop: int | None = Field(None, description="random square crop of each block (None: the whole 256x256 tile)")
    spatial_weight: float = 0.3
    temporal_weight: float = 0.7
    augment: bool = True
    exposure_range: tuple[float, float] = (0.5, 2.0)
    num_workers: int = 4
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="auto: bf16 on GPU, off on CPU")
    channels_last: bool = True
    compile: bool = False
    log_every: int = 10
    val_every: int = 1000
    val_blocks: int = Field(64, description="validation blocks evaluated per validation (0: none)")
    ckpt_every: int = 1000


class Config(_Strict):
    preset: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise QwError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(data, dict):
        raise QwError(f"{path}: a config must be a mapping with sections model/quant/train")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
    data = _merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise QwError(f"{path}: invalid config: {exc}") from None
