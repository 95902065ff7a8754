"""Training loop for QW-Net (and, with a quantization-wrapped model, for QAT): one process per GPU under torchrun.

    qw train --store blocks.zarr --out runs/NAME [--config FILE] [--resume]
    torchrun --nproc_per_node 8 -m qw.cli train --store ... --out ...        (DDP: NCCL on GPU, gloo on CPU)

The global batch is batch_size × grad_accum blocks (64 by default) at any world size: each of W processes runs
grad_accum / W micro-batches of `batch_size` blocks through the 8-step recurrence and DDP averages the gradients.
Outputs in `out/`: ``step-NNNNNNNN.pt`` every ckpt_every steps and at the end (the newest `keep_last` kept),
``last.pt`` (the newest), ``best.pt`` (lowest validation loss), ``config.yaml``, ``metrics.jsonl`` (one JSON object
per log/validation/checkpoint event) and TensorBoard scalars, validation crops and FLIP in ``tb/``.

A non-finite loss or gradient stops the run before anything is written. The check costs no extra device sync:
every step leaves a finiteness flag on the device, read in the same transfer as the logged losses (every log_every
steps) and before every validation and checkpoint; the error names the first bad step and its blocks.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from pytorch_optimizer import Ranger
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from qw.datagen import __version__
from qw.datagen.errors import QwError
from qw.training.model import fast, hdr
from qw.training.config import Config, apply_overrides, load_config, parse_overrides
from qw.training.data import (BlockDataset, BlockSampler, augment_batch, check_batch_fits, check_crop_fits,
                               open_training_store)
from qw.training.model.qwnet import QWNet, sequence_inputs
from qw.training.quantization.fake_quant import is_quantized_state
from qw.training.train.checkpoints import (BEST, CHECKPOINT_FORMAT, LAST, check_resumable, data_provenance,
                                          drop_later_checkpoints, load_checkpoint, prune_checkpoints, publish,
                                          restore_rng_state, rng_state, save_checkpoint, step_checkpoint)
from qw.training.train.ddp import (Process, gather_from_ranks, mean_over_ranks, peer_failures, replica_difference,
                                   setup_process, sync_batch_norm)
from qw.training.train.run_log import RunLog, truncate_log
from qw.training.train.schedule import make_scheduler

log = logging.getLogger("qw.train")


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    amp = cfg.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def make_loader(dataset: BlockDataset, sampler: Any, cfg: Config, device: torch.device) -> DataLoader:
    workers = cfg.train.num_workers
    # A generator of its own: starting the loader draws its workers' base seed, which from torch's global RNG
    # would move the RNG state that --resume restored (and the checkpoints record) one draw past the run's.
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


def augments_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether the workers leave flips, turns and exposure to the device (`train.augment_on`; auto: on CUDA, where
    a worker core then only reads and decodes)."""
    where = cfg.train.augment_on
    return cfg.train.augment and (where == "device" or (where == "auto" and device.type == "cuda"))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, cfg: Config, proc: Process,
             amp: torch.dtype | None) -> dict[str, float]:
    """Mean loss terms and tone-mapped PSNR (output and, for scale, the aliased input) over this rank's share."""
    from qw.training.evaluation.metrics import psnr  # the evaluation metric, so validation and `qw eval` agree

    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "spatial": 0.0, "temporal": 0.0, "psnr": 0.0, "psnr_input": 0.0, "blocks": 0.0}
    for batch in loader:
        batch = _to_device(batch, proc.device)
        output, terms = fast.forward_loss(model, batch, cfg.loss, amp)
        n = len(batch["color"])
        for k in ("loss", "spatial", "temporal"):
            totals[k] += float(terms[k]) * n
        reference = batch["reference"].float().cpu().numpy()
        for i in range(n):
            totals["psnr"] += psnr(output[i].float().cpu().numpy(), reference[i])
            totals["psnr_input"] += psnr(batch["color"][i].float().cpu().numpy(), reference[i])
        totals["blocks"] += n
    model.train(was_training)
    totals = mean_over_ranks(totals, proc)
    blocks = max(totals.pop("blocks"), 1.0)
    return {k: v / blocks for k, v in totals.items()}


@dataclass
class Run:
    """What one training process holds: the model (DDP-wrapped or compiled for the step), its plain module, and the
    optimizer state; `ema` averages the plain module's weights when enabled."""

    proc: Process
    cfg: Config
    raw_model: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    amp: torch.dtype | None
    accum: int
    best: dict[str, float] | None = None  # {"step", "loss"} of best.pt

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and shipped: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.raw_model

    def checkpoint_state(self, step: int, provenance: dict[str, Any]) -> dict[str, Any]:
        state = {"format": CHECKPOINT_FORMAT, "model": self.eval_model.state_dict(),
                 "config": self.cfg.model_dump(mode="json"), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(),
                 "step": step, "best": self.best, "hdr": hdr.describe(self.cfg.model.hdr), "data": provenance,
                 "world_size": self.proc.world_size, "qw_version": __version__}
        if self.ema is not None:  # `model` holds the EMA (what eval, infer and quantize load); resume needs both
            state["train_model"] = self.raw_model.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        return state


class FiniteGuard:
    """Finiteness of every step's micro-batch losses and gradient norm, kept on the device and read in batches.

    `bad_steps` joins the loop's one logging transfer; only when it is non-zero does `raise_first` look closer.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor, list[list[int]]]] = []

    def record(self, step: int, micro_losses: torch.Tensor, grad_norm: torch.Tensor | None,
               blocks: list[list[int]]) -> None:
        flags = [torch.isfinite(micro_losses)]
        if grad_norm is not None:  # None under float16 loss scaling, which skips overflowing steps itself
            flags.append(torch.isfinite(grad_norm).reshape(1))
        self.pending.append((step, torch.cat(flags), blocks))

    def bad_steps(self) -> torch.Tensor:
        return torch.stack([~ok.all() for _, ok, _ in self.pending]).sum()  # called after a step: never empty

    def raise_first(self, proc: Process) -> None:
        """Raise for the earliest non-finite step over all ranks, naming the blocks whose loss was non-finite."""
        local = None
        for step, ok, blocks in self.pending:
            ok = ok.tolist()
            if not all(ok):
                local = (step, sorted(b for micro, fine in zip(blocks, ok) if not fine for b in micro),
                         sorted(b for micro in blocks for b in micro))
                break
        reports = [r for r in gather_from_ranks(local, proc) if r is not None]
        step = min(r[0] for r in reports)
        loss_blocks = sorted({b for r in reports if r[0] == step for b in r[1]})
        stop = "stopped before writing a checkpoint"
        if loss_blocks:
            raise QwError(f"non-finite loss at step {step} in block(s) {', '.join(map(str, loss_blocks))}; {stop}")
        every = sorted({b for r in reports if r[0] == step for b in r[2]})
        raise QwError(f"non-finite gradient at step {step} (the loss was finite; the step's blocks: "
                      f"{', '.join(map(str, every))}); {stop}")

    def clear(self) -> None:
        self.pending.clear()


@torch.no_grad()
def validation_images(model: nn.Module, dataset: BlockDataset, indices: list[int], cfg: Config, proc: Process,
                      amp: torch.dtype | None) -> tuple[list[np.ndarray], dict[str, float]]:
    """The last frame of each given validation block as one tone-mapped row: input | TAA | output | reference,
    and the mean FLIP of the output and of TAA against the reference over those frames (small crops: FLIP is slow)."""
    from qw.training.evaluation.metrics import flip
    from qw.datagen.tonemap import tonemap
    from qw.training.evaluation.taa import run_taa

    was_training = model.training
    model.eval()
    rows, scores = [], {"flip": 0.0, "flip_taa": 0.0}
    for index in indices:
        block = _to_device({k: v.unsqueeze(0) for k, v in dataset[index].items() if k != "index"}, proc.device)
        with torch.autocast(proc.device.type, dtype=amp, enabled=amp is not None):
            output = model(*sequence_inputs(block, cfg.model.jitter_input))
        frames = zip(block["color"].unbind(1), block["motion"].unbind(1), block["history_valid"][0].tolist())
        taa = list(run_taa(frames))[-1]
        images = [x[0].float().permute(1, 2, 0).cpu().numpy()
                  for x in (block["color"][:, -1], taa, output[:, -1], block["reference"][:, -1])]
        scores["flip"] += flip(images[2], images[3], crop=None)
        scores["flip_taa"] += flip(images[1], images[3], crop=None)
        rows.append(tonemap(np.concatenate(images, axis=1)))
    model.train(was_training)
    return rows, {k: v / max(len(indices), 1) for k, v in scores.items()}


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


def _restore(path: Path, run: Run, provenance: dict[str, Any]) -> int:
    """Load the weights, optimizer, scaler and RNG state of a resumable checkpoint and set the learning rate for its
    next step; returns its step."""
    ckpt = load_checkpoint(path, expected=run.cfg)
    check_resumable(ckpt, path, run.cfg, provenance, run.proc.world_size)
    # Both kinds of run share the config and the loop; only the weights tell a QAT run from a float one.
    if is_quantized_state(ckpt["model"]) != is_quantized_state(run.raw_model.state_dict()):
        raise QwError(f"{path}: a `qw quantize` run; continue it with `qw quantize --resume`"
                      if is_quantized_state(ckpt["model"]) else
                      f"{path}: a full-precision `qw train` run; continue it with `qw train --resume`, or give "
                      "qw quantize another --out")
    run.raw_model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    if run.ema is not None:
        run.ema.module.load_state_dict(ckpt["model"])
        run.ema.n_averaged.fill_(ckpt["ema_updates"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler = make_scheduler(run.optimizer, run.cfg.train, done=int(ckpt["step"]))
    run.scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt["rng"])
    # best.pt may be newer than last.pt (a validation after the last checkpoint): compare against what it holds,
    # so that a resumed run never replaces it with a worse model.
    best = path.parent / BEST
    run.best = load_checkpoint(best)["best"] if best.is_file() else ckpt["best"]
    return int(ckpt["step"])


def _optimizer_step(run: Run, batches: Iterator[dict[str, torch.Tensor]], step: int,
                    guard: FiniteGuard) -> tuple[dict[str, torch.Tensor], list[list[int]], float]:
    """One optimizer step over `run.accum` micro-batches (DDP syncs gradients on the last one only), with
    gradient clipping, the LR schedule and the EMA.

    Returns this rank's loss terms averaged over the micro-batches and the gradient norm before clipping, still on
    the device; the block indices per micro-batch; the learning rate the step used.
    """
    cfg = run.cfg.train
    micro = [next(batches) for _ in range(run.accum)]
    blocks = [batch.pop("index").tolist() for batch in micro]
    run.optimizer.zero_grad(set_to_none=True)
    terms, losses = fast.accumulate_gradients(run.model, micro, run.cfg.loss, run.amp, run.scaler)
    run.scaler.unscale_(run.optimizer)
    # Always computed (max_norm inf: no clipping): the norm is logged and its finiteness checked.
    norm = nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip or math.inf)
    guard.record(step, losses, None if run.scaler.is_enabled() else norm, blocks)
    lr = run.scheduler.get_last_lr()[0]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.raw_model)
    return {**terms, "grad_norm": norm.detach()}, blocks, lr


def _save(run: Run, out: Path, step: int, state: dict[str, Any], checkpointing: bool, improved: bool) -> list[str]:
    """Write the step checkpoint (then best.pt, then last.pt) and/or best.pt; prune old step checkpoints. Returns
    what was written."""
    written = []
    if checkpointing:
        path = step_checkpoint(out, step)
        save_checkpoint(path, state)
        # best.pt first: a kill between the two names leaves best.pt newer than last.pt, which --resume expects (as
        # after a validation between checkpoints); the other order left best.pt a worse model than last.pt records.
        if improved:
            publish(path, out / BEST)
        publish(path, out / LAST)
        prune_checkpoints(out, run.cfg.train.keep_last)
        written += [path.name, LAST]
    elif improved:
        save_checkpoint(out / BEST, state)
    return written + [BEST] * improved


def _setup(model: nn.Module, cfg: Config, proc: Process) -> Run:
    model = sync_batch_norm(model.to(proc.device), proc)
    if proc.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned conv algorithms are reused every step
    if cfg.train.channels_last and proc.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = Ranger(model.parameters(), lr=cfg.train.lr)
    ema = None
    if cfg.train.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    amp = autocast_dtype(cfg, proc.device)
    # Validation runs raw_model: no DDP collectives, and no recompilation for eval mode and odd batch sizes.
    stepped = model
    if cfg.train.compile:
        # The one-frame step, one graph for all T steps (compiling forward would unroll the recurrence T times);
        # on a shallow copy, which shares the modules, so that raw_model keeps its eager step.
        stepped = fast.compile_step(copy.copy(model))
    if proc.world_size > 1:
        stepped = DistributedDataParallel(stepped, device_ids=[proc.device.index] if proc.device.type == "cuda"
                                          else None)
    return Run(proc, cfg, model, stepped, optimizer, make_scheduler(optimizer, cfg.train),
               torch.amp.GradScaler(proc.device.type, enabled=amp == torch.float16), ema, amp,
               cfg.train.accumulation(proc.world_size))


def train(model: nn.Module, cfg: Config, store_url: str, out: str | Path, *, resume: bool = False,
          storage_options: dict | None = None, run_info: dict[str, Any] | None = None,
          progress: bool = True) -> dict[str, float]:
    """Train `model` (a QWNet, or a model with its interface, e.g. quantization-wrapped) on a block store.

    With `resume`, continue from ``out/last.pt``: same data order, optimizer, schedule and RNG state, so the loss
    curve is the one an uninterrupted run would have produced. `run_info` is recorded in the start event (e.g. the
    command-line overrides); `progress` False hides the progress bar. Returns the last logged training metrics.
    """
    proc = setup_process(cfg.train.ddp_timeout_s)
    out = Path(out)
    store = open_training_store(store_url, storage_options)
    train_idx, val_idx = store.split_indices("train"), store.split_indices("val")
    if len(train_idx) == 0:
        raise QwError(f"{store_url}: no blocks in the 'train' split")
    check_batch_fits(store_url, len(train_idx), cfg.train.batch_size, proc.world_size)
    check_crop_fits(store_url, cfg.train.crop, store.array("color").shape[-1])
    provenance = data_provenance(store, len(train_idx), len(val_idx))
    run = _setup(model, cfg, proc)
    if resume:
        step = _restore(out / LAST, run, provenance)
    else:  # the RNG state the checkpoints record depends on the config only, whatever the caller drew before
        step = 0
        torch.manual_seed(cfg.train.seed)
    if proc.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        if resume:
            truncate_log(out / "metrics.jsonl", step)
            drop_later_checkpoints(out, step)
        else:  # what a run killed before its first checkpoint left belongs to no run: its log (start event too) and
            # best.pt (a model of its config; --resume would compare this run against it)
            for leftover in (out / "metrics.jsonl", out / BEST):
                leftover.unlink(missing_ok=True)

    per_rank_step = cfg.train.batch_size * run.accum
    on_device = augments_on_device(cfg, proc.device)
    dataset = BlockDataset(store_url, cfg.train.crop, cfg.train.augment, cfg.train.exposure_range, storage_options,
                           augment_on_device=on_device)
    sampler = BlockSampler(train_idx, proc.rank, proc.world_size, cfg.train.seed, start=step * per_rank_step)
    # Endless (BlockSampler never stops); pinned batches are copied to the device one ahead (augmented there when
    # the workers leave it to the device), in the model's layout.
    batches = fast.DevicePrefetcher(_one_line_errors(make_loader(dataset, sampler, cfg, proc.device)), proc.device,
                                    cfg.train.channels_last and proc.device.type == "cuda",
                                    augment_batch if on_device else None)
    val_idx = val_idx[: cfg.train.val_blocks]
    val_loader = _validation_loader(store_url, val_idx, cfg, proc, storage_options)
    image_blocks = val_idx[: cfg.train.val_images].tolist() if proc.main else []
    val_dataset = val_loader.dataset.dataset if val_loader is not None else None  # the Subset's blocks

    runlog = RunLog(out, proc, step, cfg.train.steps, progress)
    runlog.event("start", step, {"world_size": proc.world_size, "device": str(proc.device), "data": provenance,
                                 "effective_batch": cfg.train.effective_batch, "grad_accum_per_process": run.accum,
                                 **(run_info or {})})
    run.model.train()
    guard = FiniteGuard()
    last: dict[str, float] = {}
    busy, blocks_since = 0.0, 0  # time in training steps only (not validation or checkpoints), for blocks/s
    with peer_failures(proc, cfg.train.ddp_timeout_s):
        while step < cfg.train.steps:
            tick = time.perf_counter()
            terms, blocks, lr = _optimizer_step(run, batches, step + 1, guard)
            step += 1
            final = step == cfg.train.steps
            logged = step % cfg.train.log_every == 0 or final
            validating = val_loader is not None and (step % cfg.train.val_every == 0 or final)
            checkpointing = step % cfg.train.ckpt_every == 0 or final
            if logged or validating or checkpointing:
                # One transfer (waits for the queued steps: inside the timed span): the losses and the finiteness
                # of every step since the last one.
                values = mean_over_ranks({**terms, "nonfinite": guard.bad_steps()}, proc)
                if values.pop("nonfinite"):
                    guard.raise_first(proc)
                guard.clear()
            busy += time.perf_counter() - tick
            blocks_since += cfg.train.effective_batch
            if logged:
                last = values
            runlog.advance(last if logged else None)

            if logged:
                rate = blocks_since / busy
                runlog.event("train", step, {**last, "lr": lr, "blocks_per_s": rate,
                                             "blocks": gather_from_ranks([b for micro in blocks for b in micro], proc)},
                             {**{f"train/{k}": v for k, v in last.items()}, "train/lr": lr,
                              "train/blocks_per_s": rate})
                busy, blocks_since = 0.0, 0
            improved = False
            if validating:
                metrics = validate(run.eval_model, val_loader, cfg, proc, run.amp)
                if image_blocks:
                    rows, flips = validation_images(run.eval_model, val_dataset, image_blocks, cfg, proc, run.amp)
                    metrics.update(flips)
                    runlog.images(step, rows)
                improved = math.isfinite(metrics["loss"]) and (run.best is None or metrics["loss"] < run.best["loss"])
                if improved:
                    run.best = {"step": step, "loss": metrics["loss"]}
                runlog.event("val", step, {**metrics, "best": improved}, {f"val/{k}": v for k, v in metrics.items()})
            if checkpointing or improved:
                difference = replica_difference(run.raw_model, proc) if checkpointing else 0.0
                written = _save(run, out, step, run.checkpoint_state(step, provenance), checkpointing,
                                improved) if proc.main else []
                if checkpointing:
                    runlog.event("checkpoint", step, {"path": str(out / LAST), "written": written,
                                                      "replica_max_diff": difference})
    runlog.close()
    return last


def train_command(store: str, out: str, config: str | None = None, resume: bool = False,
                  storage_options: dict | None = None, overrides: Sequence[str] = (),
                  progress: bool = True) -> dict[str, float]:
    """`qw train`: build QW-Net from the config (default preset `paper`) with ``--set`` overrides and train it.

    Resuming without --config continues with the run's own config (overrides still apply; those that would change
    the run's trajectory are refused)."""
    out_dir = Path(out)
    changes = parse_overrides(overrides)
    if resume and not (out_dir / LAST).is_file():
        raise QwError(f"{out_dir / LAST}: nothing to resume (no checkpoint in {out_dir})")
    if resume and config is None:
        cfg = apply_overrides(Config.model_validate(load_checkpoint(out_dir / LAST)["config"]), changes,
                              str(out_dir / LAST))
    else:
        cfg = load_config(config, changes)
    if not resume and (out_dir / LAST).exists():
        raise QwError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    return train(initial_model(cfg), cfg, store, out_dir, resume=resume, storage_options=storage_options,
                 run_info={"config_source": config, "overrides": list(overrides)}, progress=progress)


def initial_model(cfg: Config) -> QWNet:
    """A freshly initialised QWNet whose weights depend only on `cfg.train.seed` (nothing in the loop draws from
    torch's RNG afterwards, so a run is reproducible from its config)."""
    torch.manual_seed(cfg.train.seed)
    return QWNet(cfg.model)
