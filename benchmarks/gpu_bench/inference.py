"""Section infer: one recurrent 1920×1088 frame, plain and optimized."""

from __future__ import annotations

from typing import Callable

import torch

from qw.training.model import fast

from gpu_bench.harness import Case, FLOAT_TOL, HALF_TOL, Harness, LATER_SECTIONS_S, no_grad_call, rel_err


class Inference(Harness):
    def inference(self) -> None:
        s = self.sizes
        color, motion, previous = self.frame_inputs(s.height, s.width)
        plain_model = self.model().eval()
        with torch.no_grad():
            expected = plain_model.step(color, plain_model.warp_history(previous, motion))
        cl = [x.contiguous(memory_format=torch.channels_last) for x in (color, motion, previous)]
        optimized = fast.fold_batch_norms(fast.fuse_filter(self.model())).to(memory_format=torch.channels_last)
        half = torch.float16 if self.cuda else torch.bfloat16  # CPU autocast: bf16
        label = "fp16" if self.cuda else "bf16"

        def plain_frame(dtype: torch.dtype | None) -> Callable[[], Case]:
            def build() -> Case:
                def fn() -> torch.Tensor:
                    with torch.no_grad(), self.autocast(dtype):
                        return plain_model.step(color, plain_model.warp_history(previous, motion))
                return Case(fn, rel_err(fn(), expected))
            return build

        def optimized_frame(dtype: torch.dtype | None) -> Callable[..., torch.Tensor]:
            def frame(c: torch.Tensor, m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                with self.autocast(dtype):
                    return fast.frame_step(optimized, c, m, p)
            return frame

        def eager(graph: bool) -> Case:
            frame = optimized_frame(half)
            with torch.no_grad():
                fn = fast.CudaGraphFrame(frame, *cl) if graph else frame
                return Case(lambda: fn(*cl), rel_err(fn(*cl), expected), profile=not graph)

        compiled: list[Callable[..., torch.Tensor]] = []

        def compiled_case(graph: bool) -> Case:
            if not compiled:
                compiled.append(torch.compile(optimized_frame(half), dynamic=False))
            with torch.no_grad():
                fn = fast.CudaGraphFrame(compiled[0], *cl) if graph else compiled[0]
                return Case(lambda: fn(*cl), rel_err(fn(*cl), expected), profile=not graph)

        def run_no_grad(build: Callable[[], Case]) -> Callable[[], Case]:
            def wrapped() -> Case:
                case = build()
                inner = case.fn
                case.fn = lambda: no_grad_call(inner)
                return case
            return wrapped

        graph_skip = "" if self.cuda else "CUDA graphs need a GPU"
        self.row("infer", "fp32 eager (plain)", plain_frame(None), unit="ms", plain=True, tol=FLOAT_TOL)
        self.row("infer", f"{label} autocast eager", plain_frame(half), unit="ms", tol=HALF_TOL)
        if self.cuda:
            self.row("infer", "bf16 autocast eager", plain_frame(torch.bfloat16), unit="ms", tol=HALF_TOL)
        self.row("infer", f"{label} CL+foldBN+fused eager", run_no_grad(lambda: eager(False)), unit="ms", tol=HALF_TOL)
        self.row("infer", f"{label} CL+foldBN+fused + CUDA graph", run_no_grad(lambda: eager(True)), unit="ms",
                 tol=HALF_TOL, skip=graph_skip)
        self.row("infer", f"{label} CL+foldBN+fused + compile", run_no_grad(lambda: compiled_case(False)), unit="ms",
                 tol=HALF_TOL, need_s=60, limit_s=240, reserve_s=LATER_SECTIONS_S, skip=self.compile_skip())
        self.row("infer", f"{label} CL+foldBN+fused + compile + CUDA graph", run_no_grad(lambda: compiled_case(True)),
                 unit="ms", tol=HALF_TOL, need_s=60 if not compiled else 5, limit_s=240, reserve_s=LATER_SECTIONS_S,
                 skip=graph_skip or self.compile_skip())
