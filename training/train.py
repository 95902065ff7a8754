"""Training loop for QW-Net (and, with a quantization-wrapped model, for QAT): one process per GPU under torchrun.

    qw train --store blocks.zarr --out runs/NAME [--config FILE] [--resume]
    torchrun --nproc_per_node 8 -m cli train --store ... --out ...        (DDP: NCCL on GPU, gloo on CPU)

Per optimizer step every process runs `grad_accum` micro-batches of `batch_size` blocks through the 8-step
recurrence; DDP averages gradients, so the effective batch is batch_size × grad_accum × world size (64 by default).
Outputs in `out/`: ``last.pt`` (atomic, every ckpt_every steps and at the end), ``metrics.jsonl`` (one JSON object
per log/validation/checkpoint event) and TensorBoard scalars in ``tb/``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from pytorch_optimizer import Ranger
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datagen import __version__
from datagen.block_store import BlockStore
from datagen.errors import QwError
from training import fast, hdr
from training.config import Config, load_config
from training.data import BlockDataset, BlockSampler, open_training_store
from training.model import QWNet

log = logging.getLogger("qw.train")
CHECKPOINT_FORMAT = "qw-checkpoint/1"
LAST = "last.pt"


# ------------------------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_process() -> Process:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set), else run alone."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return Process(0, 1, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def _mean_over_ranks(values: dict[str, torch.Tensor | float], proc: Process) -> dict[str, float]:
    """Each value's mean over the ranks, read to the host in one transfer (the loop's one sync per logged step)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=proc.device) for v in values.values()])
    if proc.world_size > 1:
        dist.all_reduce(t)
        t /= proc.world_size
    return dict(zip(values, t.tolist()))


def _gather(obj: Any, proc: Process) -> list[Any]:
    if proc.world_size == 1:
        return [obj]
    out: list[Any] = [None] * proc.world_size
    dist.all_gather_object(out, obj)
    return out


def replica_difference(model: nn.Module, proc: Process) -> float:
    """Largest parameter difference of any rank from rank 0; raises if DDP replicas drifted apart at all."""
    if proc.world_size == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    worst = (flat - reference).abs().max()
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if float(worst) > 0:
        raise RuntimeError(f"DDP replicas differ from rank 0 by up to {float(worst):g}")
    return float(worst)


# ------------------------------------------------------------------------------------------------ checkpoints


def data_provenance(store: BlockStore, train_blocks: int, val_blocks: int) -> dict[str, Any]:
    attrs = store.attrs
    return {"store": store.url, "format": attrs.get("format"), "num_blocks": store.num_blocks,
            "train_blocks": train_blocks, "val_blocks": val_blocks, "plan_digest": attrs.get("plan_digest"),
            "store_qw_version": attrs.get("qw_version")}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, expected: Config | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only); with `expected`, refuse one whose model/quant config differs."""
    path = Path(path)
    if not path.is_file():
        raise QwError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise QwError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise QwError(f"{path}: not a qw checkpoint (expected format {CHECKPOINT_FORMAT})")
    if expected is not None:
        for section in ("model", "quant"):
            have, want = ckpt["config"][section], getattr(expected, section).model_dump(mode="json")
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                details = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
                raise QwError(f"{path}: checkpoint was made with another {section} config ({details})")
    return ckpt


def model_from_checkpoint(path: str | Path) -> tuple[QWNet, Config]:
    """The float QW-Net and its config from a training checkpoint (for evaluation, inference, quantization)."""
    ckpt = load_checkpoint(path)
    cfg = Config.model_validate(ckpt["config"])
    model = QWNet(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model, cfg


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ the loop


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    amp = cfg.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def make_loader(dataset: BlockDataset, sampler: Any, cfg: Config, device: torch.device) -> DataLoader:
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, cfg: Config, proc: Process,
             amp: torch.dtype | None) -> dict[str, float]:
    """Mean loss terms and tone-mapped PSNR (output and, for scale, the aliased input) over this rank's share."""
    from training.metrics import psnr  # the evaluation metric, so validation and `qw eval` agree

    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "spatial": 0.0, "temporal": 0.0, "psnr": 0.0, "psnr_input": 0.0, "blocks": 0.0}
    for batch in loader:
        batch = _to_device(batch, proc.device)
        output, terms = fast.forward_loss(model, batch, cfg.model.hdr, amp, cfg.train.spatial_weight,
                                          cfg.train.temporal_weight)
        n = len(batch["color"])
        for k in ("loss", "spatial", "temporal"):
            totals[k] += float(terms[k]) * n
        reference = batch["reference"].float().cpu().numpy()
        for i in range(n):
            totals["psnr"] += psnr(output[i].float().cpu().numpy(), reference[i])
            totals["psnr_input"] += psnr(batch["color"][i].float().cpu().numpy(), reference[i])
        totals["blocks"] += n
    model.train(was_training)
    totals = _mean_over_ranks(totals, proc)
    blocks = max(totals.pop("blocks"), 1.0)
    return {k: v / blocks for k, v in totals.items()}


class RunLog:
    """JSON lines + TensorBoard scalars + the progress bar; a no-op on ranks other than 0."""

    def __init__(self, out: Path, proc: Process, start: int, total: int):
        self.enabled = proc.main
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = open(out / "metrics.jsonl", "a")
        self.tb = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def event(self, kind: str, step: int, values: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"event": kind, "step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        for name, value in (scalars or {}).items():
            self.tb.add_scalar(name, value, step)

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        if self.enabled:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.jsonl.close()


def _checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: Config,
                      step: int, provenance: dict[str, Any], world_size: int) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.model_dump(mode="json"),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(), "step": step,
            "hdr": hdr.describe(cfg.model.hdr), "data": provenance, "world_size": world_size,
            "qw_version": __version__}


def _one_line_errors(batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """The batches; a QwError from a DataLoader worker comes back as one line, without the worker traceback."""
    try:
        yield from batches
    except QwError as exc:
        lines = str(exc).strip().splitlines()
        if len(lines) == 1:
            raise
        raise QwError(lines[-1].split(": ", 1)[-1]) from None


def _validation_loader(url: str, val_idx: np.ndarray, cfg: Config, proc: Process,
                       storage_options: dict | None) -> DataLoader | None:
    """Centre crops of this rank's share of the validation blocks (None when the store has no validation split)."""
    if len(val_idx) == 0:
        return None
    dataset = BlockDataset(url, cfg.train.crop, augment=False, storage_options=storage_options)
    share = torch.utils.data.Subset(dataset, val_idx[proc.rank::proc.world_size].tolist())
    return DataLoader(share, batch_size=cfg.train.batch_size)


def _restore(path: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, proc: Process) -> int:
    """Load model, optimizer, scaler and RNG state from a checkpoint of the same config; returns its step."""
    ckpt = load_checkpoint(path, expected=cfg)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    if ckpt["world_size"] != proc.world_size:
        log.warning("resuming a %d-process run on %d processes: the data order changes",
                    ckpt["world_size"], proc.world_size)
    return int(ckpt["step"])


def _optimizer_step(model: nn.Module, batches: Iterator[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, cfg: Config,
                    amp: torch.dtype | None) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One optimizer step over `grad_accum` micro-batches (DDP syncs gradients on the last one only).

    Returns this rank's loss terms averaged over the micro-batches, still on the device, and the block indices.
    """
    micro = [next(batches) for _ in range(cfg.train.grad_accum)]
    seen = [i for batch in micro for i in batch.pop("index").tolist()]
    terms = fast.train_step_terms(model, optimizer, micro, cfg.model.hdr, amp, cfg.train.spatial_weight,
                                  cfg.train.temporal_weight, scaler)
    return terms, seen


def train(model: nn.Module, cfg: Config, store_url: str, out: str | Path, *, resume: bool = False,
          storage_options: dict | None = None) -> dict[str, float]:
    """Train `model` (a QWNet, or a model with its interface, e.g. quantization-wrapped) on a block store.

    With `resume`, continue from ``out/last.pt``: same data order, optimizer and RNG state, so the loss curve is
    the one an uninterrupted run would have produced. Returns the last logged training metrics.
    """
    proc = setup_process()
    out = Path(out)
    store = open_training_store(store_url, storage_options)
    train_idx, val_idx = store.split_indices("train"), store.split_indices("val")
    if len(train_idx) == 0:
        raise QwError(f"{store_url}: no blocks in the 'train' split")
    provenance = data_provenance(store, len(train_idx), len(val_idx))
    model = model.to(proc.device)
    if proc.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned conv algorithms are reused every step
    channels_last = cfg.train.channels_last and proc.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = Ranger(model.parameters(), lr=cfg.train.lr)
    amp = autocast_dtype(cfg, proc.device)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=amp == torch.float16)
    step = _restore(out / LAST, cfg, model, optimizer, scaler, proc) if resume else 0
    if not resume and proc.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # Validation runs raw_model: no DDP collectives, and no recompilation for eval mode and odd batch sizes.
    raw_model = model
    if cfg.train.compile:
        # The one-frame step, one graph for all T steps (compiling forward would unroll the recurrence T times);
        # on a shallow copy, which shares the modules, so that raw_model keeps its eager step.
        model = fast.compile_step(copy.copy(model))
    if proc.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)

    per_step = cfg.train.batch_size * cfg.train.grad_accum
    dataset = BlockDataset(store_url, cfg.train.crop, cfg.train.augment, cfg.train.exposure_range, storage_options)
    sampler = BlockSampler(train_idx, proc.rank, proc.world_size, cfg.train.seed, start=step * per_step)
    # Endless (BlockSampler never stops); pinned batches are copied to the device one ahead, in the model's layout.
    batches = fast.DevicePrefetcher(_one_line_errors(make_loader(dataset, sampler, cfg, proc.device)), proc.device,
                                    channels_last)
    val_loader = _validation_loader(store_url, val_idx[: cfg.train.val_blocks], cfg, proc, storage_options)

    runlog = RunLog(out, proc, step, cfg.train.steps)
    runlog.event("start", step, {"world_size": proc.world_size, "device": str(proc.device), "data": provenance,
                                 "effective_batch": per_step * proc.world_size})
    model.train()
    last: dict[str, float] = {}
    busy, blocks_since = 0.0, 0  # time in training steps only (not validation or checkpoints), for blocks/s
    while step < cfg.train.steps:
        tick = time.perf_counter()
        terms, seen = _optimizer_step(model, batches, optimizer, scaler, cfg, amp)
        step += 1
        logged = step % cfg.train.log_every == 0 or step == cfg.train.steps
        if logged:
            last = _mean_over_ranks(terms, proc)  # waits for the queued steps: inside the timed span
        busy += time.perf_counter() - tick
        blocks_since += per_step * proc.world_size
        runlog.advance(last if logged else None)

        if logged:
            rate = blocks_since / busy
            lr = optimizer.param_groups[0]["lr"]
            runlog.event("train", step, {**last, "lr": lr, "blocks_per_s": rate, "blocks": _gather(seen, proc)},
                         {**{f"train/{k}": v for k, v in last.items()}, "train/lr": lr, "train/blocks_per_s": rate})
            busy, blocks_since = 0.0, 0
        if val_loader is not None and (step % cfg.train.val_every == 0 or step == cfg.train.steps):
            metrics = validate(raw_model, val_loader, cfg, proc, amp)
            runlog.event("val", step, metrics, {f"val/{k}": v for k, v in metrics.items()})
        if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
            difference = replica_difference(raw_model, proc)
            if proc.main:
                save_checkpoint(out / LAST, _checkpoint_state(raw_model, optimizer, scaler, cfg, step, provenance,
                                                              proc.world_size))
            runlog.event("checkpoint", step, {"path": str(out / LAST), "replica_max_diff": difference})
    runlog.close()
    return last


def train_command(store: str, out: str, config: str | None = None, resume: bool = False,
                  storage_options: dict | None = None) -> dict[str, float]:
    """`qw train`: build QW-Net from the config (default preset `paper`) and train it."""
    out_dir = Path(out)
    if resume and not (out_dir / LAST).is_file():
        raise QwError(f"{out_dir / LAST}: nothing to resume (no checkpoint in {out_dir})")
    if resume and config is None:
        cfg = Config.model_validate(load_checkpoint(out_dir / LAST)["config"])
    else:
        cfg = load_config(config)
    if not resume and (out_dir / LAST).exists():
        raise QwError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    return train(initial_model(cfg), cfg, store, out_dir, resume=resume, storage_options=storage_options)


def initial_model(cfg: Config) -> QWNet:
    """A freshly initialised QWNet whose weights depend only on `cfg.train.seed` (nothing in the loop draws from
    torch's RNG afterwards, so a run is reproducible from its config)."""
    torch.manual_seed(cfg.train.seed)
    return QWNet(cfg.model)
