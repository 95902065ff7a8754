"""`qw quantize`: quantization-aware fine-tuning of a trained QW-Net, and loading either kind of checkpoint.

The quantizers, BN folding and the QAT model itself are `qw.training.quantization.fake_quant` (a library that knows nothing of
training runs); this module is the workflow that calibrates them on a store and fine-tunes through `qw train`'s loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from qw.datagen.capture_format import sha256_file
from qw.datagen.errors import QwError
from qw.training.config import Config, TrainConfig, apply_overrides, parse_overrides
from qw.training.data import BlockDataset, open_training_store
from qw.training.model.qwnet import QWNet
from qw.training.quantization.fake_quant import (QUANT_PRESETS, calibrate_clips, check_quantizable, is_quantized_state, quant_sites,
                           quantize_model)
from qw.training.train.checkpoints import LAST, load_checkpoint
from qw.training.train.loop import train
from qw.training.train.schedule import SCHEDULE_KEYS

QAT_DEFAULT_STEPS = 2000
QAT_DEFAULT_LR = 1e-4
QAT_RESET = (*sorted(SCHEDULE_KEYS - {"steps"}), "ema_decay")  # to their defaults


def model_from_any_checkpoint(path: str | Path) -> tuple[nn.Module, Config, bool]:
    """(model, config, quantized) from a `qw train` or a `qw quantize` checkpoint, in eval mode on the CPU."""
    ckpt = load_checkpoint(path)
    cfg = Config.model_validate(ckpt["config"])
    model = QWNet(cfg.model)
    quantized = is_quantized_state(ckpt["model"])
    if quantized:
        model = quantize_model(model, cfg.quant)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise QwError(f"{path}: weights do not fit the checkpoint's own config ({str(exc).splitlines()[0]})") from None
    return model.eval(), cfg, quantized


def calibration_sequences(store_url: str, crop: int | None, blocks: int,
                          storage_options: dict | None = None) -> list[dict]:
    """The first `blocks` training blocks of a store (centre crops), one batch of one block each."""
    indices = open_training_store(store_url, storage_options).split_indices("train")[:blocks]
    dataset = BlockDataset(store_url, crop, storage_options=storage_options)
    return [{k: v.unsqueeze(0) for k, v in dataset[int(i)].items() if k != "index"} for i in indices]


RECORD = "quantize.json"  # what a fine-tuning run started from: source checkpoint (path, sha256), bits, clips


def check_same_source(out_dir: Path, checkpoint: str | Path) -> None:
    """Refuse to resume a fine-tuning run from another full-precision checkpoint than the one it started from: it
    would go on fine-tuning its own model, and the checkpoint given would be ignored without a word. Runs recorded
    before the sha256 was kept are not checked."""
    path = out_dir / RECORD
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise QwError(f"{path}: cannot be read ({exc})") from None
    if record.get("source_sha256") not in (None, sha256_file(checkpoint)):
        raise QwError(f"{out_dir}: fine-tunes {record.get('source_checkpoint')}, not {checkpoint} (other contents); "
                      "resume it from that checkpoint or choose another --out")


def quantize_command(checkpoint: str, store: str, out: str, *, bits: str = "w4a4", steps: int | None = None,
                     lr: float | None = None, batch_size: int | None = None, grad_accum: int | None = None,
                     crop: int | None = None, calibration_blocks: int = 4, resume: bool = False,
                     settings: Sequence[str] = (), storage_options: dict | None = None,
                     progress: bool = True) -> dict[str, float]:
    """`qw quantize`: fold BN, calibrate clips, then fine-tune with simulated quantization (STE) via `train`.

    The fine-tuning starts from the run's train settings with its own steps and lr, a constant schedule and no EMA
    (the pre-training schedule does not fit a short fine-tuning); `settings` (``train.KEY=VALUE``) change them."""
    if bits not in QUANT_PRESETS:
        raise QwError(f"--bits {bits!r}: choose one of {', '.join(QUANT_PRESETS)}")
    out_dir = Path(out)
    if not resume and (out_dir / LAST).exists():
        raise QwError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    model, cfg, quantized = model_from_any_checkpoint(checkpoint)
    if quantized:
        raise QwError(f"{checkpoint}: already a quantized checkpoint; quantize the full-precision one")
    try:
        check_quantizable(model)
    except ValueError as exc:
        raise QwError(f"{checkpoint}: {exc}") from None
    given = {k: v for k, v in {"steps": steps, "lr": lr, "batch_size": batch_size, "grad_accum": grad_accum,
                               "crop": crop}.items() if v is not None}  # the options given on this call
    changes = parse_overrides(settings)
    if set(changes) - {"train"}:
        raise QwError(f"--set {', '.join(sorted(set(changes) - {'train'}))}.*: qw quantize takes train.* overrides only "
                      f"(the model comes from {checkpoint}, the bit widths from --bits)")
    fresh = {k: TrainConfig.model_fields[k].get_default(call_default_factory=True) for k in QAT_RESET}
    overrides = {"steps": QAT_DEFAULT_STEPS, "lr": QAT_DEFAULT_LR, **given}
    start = {**fresh, **overrides}
    if resume and (out_dir / LAST).is_file():
        check_same_source(out_dir, checkpoint)
        # Continue with the run's own settings, as `qw train --resume` does: the QAT defaults above would
        # silently stretch a `--steps 80` run to 2000 steps. Options given again still apply (and are checked).
        start = {**load_checkpoint(out_dir / LAST)["config"]["train"], **given}
    cfg = apply_overrides(cfg.model_copy(update={"quant": QUANT_PRESETS[bits]}),
                          {"train": {**start, **changes.get("train", {})}}, str(checkpoint))
    sites = quant_sites(model, cfg.quant)
    clips = None if resume else calibrate_clips(model, sites, calibration_sequences(store, cfg.train.crop,
                                                                                    calibration_blocks,
                                                                                    storage_options))
    qmodel = quantize_model(model, cfg.quant, clips)
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RECORD).write_text(json.dumps(
            {"source_checkpoint": str(checkpoint), "source_sha256": sha256_file(checkpoint), "bits": bits,
             "quant": cfg.quant.model_dump(), "initial_clips": clips, "train_overrides": overrides, "set": list(settings)}, indent=1) + "\n")
    return train(qmodel, cfg, store, out_dir, resume=resume, storage_options=storage_options, progress=progress)
