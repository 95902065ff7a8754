"""Sections train and qat: one optimizer step, plain and optimized."""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch

from qw.training.model import fast
from qw.training.config import QuantConfig
from qw.training.model.qwnet import QWNet

from gpu_bench.harness import Case, HALF_TOL, Harness, LATER_SECTIONS_S


class Training(Harness):
    def training(self, qat: bool) -> None:
        section = "qat" if qat else "train"
        batch = self.block_batch(self.sizes.batch)
        batch_cl = {k: fast.channels_last_frames(v) if v.dim() == 5 else v for k, v in batch.items()}
        reference: dict[str, Any] = {}  # the plain row's first loss; micro-batch sizes that fitted

        def build(amp: torch.dtype | None, optimized: bool, compiled: bool) -> Callable[[], Case]:
            def make() -> Case:
                model = self.model()
                if qat:
                    from qw.training.quantization.fake_quant import quantize_model

                    model = quantize_model(model, QuantConfig()).to(self.device)  # clips are created on the CPU
                model.train()
                if optimized:
                    fast.fuse_filter(model).to(memory_format=torch.channels_last)
                if compiled:
                    fast.compile_step(model)
                # A compiled row starts at the micro-batch the eager row of its configuration found to fit: an
                # out-of-memory retry would compile the graph again for the new shape.
                key = f"micro {amp} {optimized}"
                case, micro = self._train_case(model, batch_cl if optimized else batch, amp, reference,
                                               reference.get(key) if compiled else None)
                reference.setdefault(key, micro)
                return case
            return make

        bf16 = torch.bfloat16
        self.row(section, "fp32 eager (plain)", build(None, False, False), unit="blocks/s", plain=True, warmup=1,
                 reps=6, max_s=15, need_s=20, limit_s=150)
        if not qat:
            self.row(section, "bf16 autocast eager", build(bf16, False, False), unit="blocks/s", tol=HALF_TOL,
                     warmup=1, reps=6, max_s=15, need_s=15, limit_s=150)
        self.row(section, "bf16 CL+fused eager", build(bf16, True, False), unit="blocks/s", tol=HALF_TOL,
                 warmup=1, reps=6, max_s=15, need_s=15, limit_s=150)
        self.row(section, "bf16 CL+fused + compile(step)", build(bf16, True, True), unit="blocks/s", tol=HALF_TOL,
                 warmup=1, reps=6, max_s=15, need_s=100, limit_s=300, reserve_s=LATER_SECTIONS_S,
                 skip=self.compile_skip())

    def _train_case(self, model: QWNet, batch: dict[str, torch.Tensor], amp: torch.dtype | None,
                    reference: dict[str, float], micro: int | None = None) -> tuple[Case, int]:
        """The optimizer step of `batch` and its micro-batch: halved until one fits (gradient accumulation)."""
        from pytorch_optimizer import Ranger

        optimizer = Ranger(model.parameters(), lr=self.cfg.train.lr)
        n = len(batch["color"])
        micro = micro or n
        while True:
            parts = [{k: v[i:i + micro] for k, v in batch.items()} for i in range(0, n, micro)]
            try:
                loss = float(fast.train_step(model, optimizer, parts, self.cfg.loss, amp))
                break
            except torch.cuda.OutOfMemoryError:
                if micro == 1:
                    raise
                micro //= 2
                gc.collect()
                torch.cuda.empty_cache()
        first = reference.setdefault("loss", loss)
        note = f"micro-batch {micro} x {len(parts)} accumulated" if len(parts) > 1 else f"batch {n}"
        return Case(lambda: fast.train_step(model, optimizer, parts, self.cfg.loss, amp),
                    abs(loss - first) / abs(first), note + f"; first loss {loss:.5g}", blocks=n), micro
