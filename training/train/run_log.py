"""What a training run records: ``metrics.jsonl``, TensorBoard scalars and validation crops, the progress bar."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qw.datagen.errors import missing_extra
from qw.training.train.ddp import Process

log = logging.getLogger("qw.train")


def truncate_log(path: Path, step: int) -> None:
    """Drop the events after `step` (logged before a crash, past the checkpoint being resumed), so that after
    --resume every step appears once. Lines torn by the crash are dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class RunLog:
    """JSON lines + TensorBoard scalars + the progress bar; a no-op on ranks other than 0."""

    def __init__(self, out: Path, proc: Process, start: int, total: int, progress: bool = True):
        self.enabled = proc.main
        if not self.enabled:
            return
        self.jsonl = open(out / "metrics.jsonl", "a")
        self.tb = None
        no_tensorboard = missing_extra("tensorboard", "tensorboard", "TensorBoard logs")
        if no_tensorboard:
            log.warning("%s: %s has the metrics", no_tensorboard, out / "metrics.jsonl")
        else:
            from torch.utils.tensorboard import SummaryWriter

            # Hides the scalars and images logged after `start` by a killed run (on a fresh start, all of them).
            self.tb = SummaryWriter(str(out / "tb"), purge_step=start + 1)
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                        disable=None if progress else True)

    def event(self, kind: str, step: int, values: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"event": kind, "step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        for name, value in (scalars or {}).items() if self.tb else ():
            self.tb.add_scalar(name, value, step)

    def images(self, step: int, rows: list[np.ndarray]) -> None:
        """Validation crops, one image per block: input | TAA | output | reference (tone-mapped HxWx3)."""
        if self.enabled and self.tb:
            for i, row in enumerate(rows):
                self.tb.add_image(f"val/crops/{i}", np.clip(row, 0, 1), step, dataformats="HWC")

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        if self.enabled:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self.tb:
                self.tb.close()
            self.jsonl.close()
