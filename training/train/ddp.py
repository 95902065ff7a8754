"""One process per GPU under torchrun: the process group, cross-rank reductions, peer failures and
SyncBatchNorm."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from qw.datagen.errors import QwError

log = logging.getLogger("qw.train")


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_process(timeout_s: float) -> Process:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set), else run alone.

    `timeout_s` bounds every collective: a stalled peer fails the run instead of hanging it.
    """
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return Process(0, 1, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        # Left to the interpreter's teardown, the group's threads were once destroyed while still running (a rank
        # aborted with "terminate called without an active exception" after a finished run); torch's documented
        # end of a process: destroy the group. At exit, so QAT after training in one process reuses it.
        atexit.register(_leave_process_group)
    return Process(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: dict[str, torch.Tensor | float], proc: Process) -> dict[str, float]:
    """Each value's mean over the ranks, read to the host in one transfer (the loop's one sync per logged step)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=proc.device) for v in values.values()])
    if proc.world_size > 1:
        dist.all_reduce(t)
        t /= proc.world_size
    return dict(zip(values, t.tolist()))


def gather_from_ranks(obj: Any, proc: Process) -> list[Any]:
    """`obj` of every rank, in rank order (a picklable object; no collective when there is one process)."""
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


def _is_peer_failure(exc: RuntimeError) -> bool:
    """A collective that timed out or lost its peer (gloo raises plain RuntimeErrors; NCCL DistErrors)."""
    return isinstance(exc, dist.DistError) or any(
        text in str(exc) for text in ("Timed out", "timed out", "Connection closed by peer", "Connection reset"))


@contextlib.contextmanager
def peer_failures(proc: Process, timeout_s: float) -> Iterator[None]:
    """A DDP collective that fails because a peer stalled or died, as one line instead of a traceback."""
    try:
        yield
    except RuntimeError as exc:
        if proc.world_size == 1 or not _is_peer_failure(exc):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0])  # drop gloo's source location
        raise QwError(f"rank {proc.rank}: a DDP peer stalled or failed (train.ddp_timeout_s = {timeout_s:g}): "
                      f"{detail}") from None


def sync_batch_norm(model: nn.Module, proc: Process) -> nn.Module:
    """Under DDP, batch norm statistics over all ranks' micro-batches together (SyncBatchNorm).

    torch implements SyncBatchNorm for GPUs only: CPU (gloo) ranks keep per-rank statistics, with a warning.
    The state-dict keys do not change, so checkpoints load into a plain QWNet.
    """
    if proc.world_size == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if proc.device.type != "cuda":
        log.warning("batch norm statistics stay per rank: torch's SyncBatchNorm needs GPUs")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
