"""Training checkpoints: the file format, atomic publishing of ``last.pt``/``best.pt``/``step-N.pt``, pruning,
loading and the checks that make ``--resume`` continue the same run."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from qw.datagen.block_store import BlockStore
from qw.datagen.capture_format import atomic_path
from qw.datagen.errors import QwError
from qw.training.config import Config, TrainConfig, validated_config
from qw.training.export.qwq import is_qwq_file
from qw.training.model.qwnet import QWNet
from qw.training.train.schedule import SCHEDULE_KEYS, changed_rate

CHECKPOINT_FORMAT = "qw-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"
STEP_PREFIX = "step-"
ZIP_MAGIC = b"PK\x03\x04"
# Train settings that may change on --resume: they do not alter the weights' trajectory. The schedule's settings
# may change too, as long as the rates of the steps already taken stay the same.
RESUME_ADJUSTABLE = {"log_every", "val_every", "val_blocks", "val_images", "ckpt_every", "keep_last", "num_workers",
                     "augment_on", "compile", "channels_last", "ddp_timeout_s"} | SCHEDULE_KEYS


def data_provenance(store: BlockStore, train_blocks: int, val_blocks: int) -> dict[str, Any]:
    attrs = store.attrs
    return {"store": store.url, "format": attrs.get("format"), "num_blocks": store.num_blocks,
            "train_blocks": train_blocks, "val_blocks": val_blocks, "plan_digest": attrs.get("plan_digest"),
            "store_qw_version": attrs.get("qw_version")}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the previous checkpoint intact; a full disk is one line and leaves no
    temporary file. (Through a Python file object: torch.save to a path reports ENOSPC as a bare zip error.)"""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(_interned(state), file)


def _interned(value: Any) -> Any:
    """`value` with every string interned. Pickle writes a string once per object, so equal strings that are one
    object in a fresh run (code literals) but several after --resume (each read from the checkpoint) would give
    the same state other bytes."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):  # dict or a state_dict's OrderedDict, whose _metadata is kept
        interned = type(value)((_interned(k), _interned(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            interned._metadata = _interned(value._metadata)
        return interned
    if type(value) in (list, tuple):
        return type(value)(_interned(v) for v in value)
    return value


def step_checkpoint(out: Path, step: int) -> Path:
    """The checkpoint of `step` (zero-padded, so that the names sort by step)."""
    return out / f"{STEP_PREFIX}{step:08d}.pt"


def step_checkpoints(out: Path) -> list[Path]:
    """The run's step checkpoints, oldest first."""
    return sorted(out.glob(f"{STEP_PREFIX}*.pt"))


def drop_later_checkpoints(out: Path, step: int) -> None:
    """Delete the step checkpoints past `step`, the one being resumed: a run killed between writing a step
    checkpoint and publishing it as last.pt leaves one behind, a state the resumed run may never reach (its
    schedule or ckpt_every may differ) and that pruning, which keeps the newest names, would keep over its own."""
    resumed = step_checkpoint(out, step).name
    for path in step_checkpoints(out):
        if path.name > resumed:
            path.unlink()


def publish(source: Path, name: Path) -> None:
    """Make `name` the same checkpoint as `source`, atomically: a hard link (no second copy of the bytes), or a
    copy where the filesystem has no links."""
    with atomic_path(name) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def prune_checkpoints(out: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints. last.pt and best.pt are names of their own (hard links),
    so pruning never removes the newest or the best model."""
    old = step_checkpoints(out)[:-keep]
    for path in old:
        path.unlink()
    return old


def load_checkpoint(path: str | Path, expected: Config | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only); with `expected`, refuse one whose model/quant config differs."""
    path = Path(path)
    if not path.is_file():
        raise QwError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise QwError(unreadable_checkpoint(path, exc)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise QwError(f"{path}: not a qw checkpoint (expected format {CHECKPOINT_FORMAT})")
    if "model" not in ckpt:
        raise QwError(f"{path}: damaged qw checkpoint (no model weights)")
    stored = validated_config(ckpt.get("config"), f"{path}: checkpoint")
    if expected is not None:
        for section in ("model", "quant"):
            # Compared as validated: a key added to the config since the checkpoint was written takes its default,
            # which is how the checkpoint was trained (new options default to the old behaviour).
            have = getattr(stored, section).model_dump(mode="json")
            want = getattr(expected, section).model_dump(mode="json")
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                details = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
                raise QwError(f"{path}: checkpoint was made with another {section} config ({details})")
    return ckpt


def unreadable_checkpoint(path: Path, exc: Exception) -> str:
    """One line on what a file that torch.load refused is: an exported .qwq, a damaged checkpoint, or something else."""
    if is_qwq_file(path):
        return (f"{path}: an exported integer model (.qwq), not a checkpoint; `qw eval --qwq {path}` runs it, and "
                "--checkpoint takes the `qw quantize` checkpoint it was exported from")
    with open(path, "rb") as file:
        zipped = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # torch.save's format: a zip archive
    if zipped and not isinstance(exc, pickle.UnpicklingError):
        return f"{path}: a damaged or truncated checkpoint (torch: {str(exc).strip().splitlines()[0]})"
    return f"{path}: not a qw checkpoint (qw train and qw quantize write them)"


def model_from_checkpoint(path: str | Path) -> tuple[QWNet, Config]:
    """The float QW-Net and its config from a training checkpoint (for evaluation, inference, quantization)."""
    ckpt = load_checkpoint(path)
    cfg = Config.model_validate(ckpt["config"])
    model = QWNet(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model, cfg


def rng_state() -> dict[str, Any]:
    """The torch (and CUDA) random states, saved in a checkpoint so that --resume draws what the run would have."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the random states `rng_state` saved (CUDA only where this machine has it)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resumable(ckpt: dict[str, Any], path: Path, cfg: Config, provenance: dict[str, Any],
                    world_size: int) -> None:
    """Refuse to resume unless the run can continue exactly: the same store, world size and trajectory settings."""
    problems = [f"store {key} {ckpt['data'].get(key)!r} vs {provenance.get(key)!r}"
                for key in ("plan_digest", "num_blocks", "train_blocks", "val_blocks")
                if ckpt["data"].get(key) != provenance.get(key)]
    if ckpt["world_size"] != world_size:
        problems.append(f"world size {ckpt['world_size']} vs {world_size} (each rank's data and micro-batches change)")
    have = TrainConfig.model_validate(ckpt["config"]["train"])
    recorded = have.model_dump(mode="json")
    problems += [f"train.{key} {recorded[key]!r} vs {value!r}" for key, value in cfg.train.model_dump(mode="json").items()
                 if key not in RESUME_ADJUSTABLE and recorded[key] != value]
    changed = changed_rate(have, cfg.train, int(ckpt["step"]))
    if changed is not None:
        differ = ", ".join(f"train.{key} {getattr(have, key)!r} vs {getattr(cfg.train, key)!r}"
                           for key in sorted(SCHEDULE_KEYS) if getattr(have, key) != getattr(cfg.train, key))
        problems.append(f"{differ}: changes the learning rate of step {changed}, already taken")
    if problems:
        raise QwError(f"{path}: cannot continue this run exactly ({'; '.join(problems)}); resume with the run's "
                      f"store and settings, or start a new --out")
