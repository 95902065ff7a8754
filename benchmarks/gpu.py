"""QW-Net speed on one GPU: training blocks/s, data-loader blocks/s, 1920×1088 inference ms; plain vs optimized.

Every configuration is first checked against the plain fp32 PyTorch model on the same inputs (relative error
‖out − plain‖/‖plain‖, or of the first training loss), then timed after warm-up: CUDA events around each call,
median of many calls (time.perf_counter on CPU). Sections (``--sections``; each row is time-boxed, and a row that
fails or runs out of time is reported in the table, not fatal):

  correctness  fused filter vs plain (fp32), optimized inference vs plain (random and, with --store, real blocks)
  infer        one recurrent 1920×1088 frame (warp + network): fp32, fp16, bf16, fp16 channels_last with folded
               batch norm and the fused filter, + CUDA graph, + torch.compile, + both
  train        one optimizer step of 64 blocks of 256×256×8 (Ranger, the QW-Net loss): fp32, bf16 autocast,
               bf16 channels_last + fused filter, + torch.compile; micro-batches halve on out-of-memory and
               the step accumulates gradients (noted in the row)
  qat          the same step for the quantization-aware model (training/quantization/fake_quant.py): fp32 plain, optimized
  loader       the real DataLoader (training/data.py, augmentation on) with every core, from a block store of
               random data that this script builds, into pinned memory and onto the device
  int8         the exported integer network (training/export/integer_ref.py) with its quantized convs as int8 GEMMs
               (torch._int_mm): checked against the integer reference, timed per frame
  profile      torch.profiler's top kernels of the fastest inference and training configurations, and the time
               per kernel class (conv/GEMM, generated, eager elementwise, layout/copy): why a goal is missed

Goals (issue 8): train bf16 ≥ 400 blocks/s, QAT ≥ 200 blocks/s, inference ≤ 2 ms per 1920×1088 frame. "goal×" is
value/goal for rates and goal/value for times (≥ 1 meets the goal); "vs plain" is the speed-up over the section's
plain-PyTorch row of the same run.

Here (CPU smoke run, small sizes, compile rows off unless --compile on; timings on a shared machine are noise):

    .venv/bin/python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.json

On a lent GPU (the `device` tool). Its machine (KINDS.md, 2026-11) runs `python3` 3.12 with torch 2.11+cu130,
triton, numpy, pyyaml, tqdm, click and torchmetrics, has no network, and lacks zarr, pydantic and
pytorch_optimizer: carry them as wheels (13 MB). `make install` cannot work there (no registry); nothing else
is needed. Once, here (build/ is git-ignored):

    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d build/device-wheels -r benchmarks/gpu_requirements.txt

then one call, run(kind omitted, timeout_s=570, carry=["build/device-wheels"], command=)

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site
    build/device-wheels/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py
    --device cuda --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log

The whole run is budgeted to --budget-s (default 460 s on CUDA, compile time included); rows that would not fit
are skipped with a note. Results (rows, profiles, environment) are rewritten to --out after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import re
import shutil
import signal
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from qw.training.model import fast
from qw.training.config import Config, QuantConfig, load_config
from qw.training.model.qwnet import QWNet

GOALS = {"train": 400.0, "qat": 200.0, "loader": 400.0, "infer": 2.0, "int8": 2.0}
HALF_TOL = 3e-2      # fp16/bf16 arithmetic against fp32 (METHOD.md: bf16 operands land between 1e-3 and 1e-2)
FLOAT_TOL = 5e-3     # fp32 rearranged (fused filter, compile); cuDNN's TF32 convs differ at ~1e-3
PROFILE_RESERVE_S = 30.0
LATER_SECTIONS_S = 70.0  # kept free for the loader and int8 sections when a compile row is time-boxed


@dataclass(frozen=True)
class Sizes:
    batch: int          # blocks per optimizer step
    frames: int         # T
    tile: int           # block height = width
    height: int         # inference frame
    width: int
    loader_blocks: int  # blocks in the generated store
    check: int          # crop size of the integer-reference check (the reference runs on the CPU)


FULL = Sizes(batch=64, frames=8, tile=256, height=1088, width=1920, loader_blocks=64, check=128)
QUICK = Sizes(batch=2, frames=3, tile=32, height=64, width=128, loader_blocks=12, check=64)


@dataclass
class Row:
    section: str
    name: str
    unit: str
    value: float | None = None
    goal: float | None = None
    plain: bool = False
    rel_err: float | None = None
    tol: float | None = None
    note: str = ""
    error: str = ""
    vs_plain: float | None = None

    @property
    def goal_ratio(self) -> float | None:
        if self.value is None or self.goal is None or self.value <= 0:
            return None
        return self.goal / self.value if self.unit == "ms" else self.value / self.goal


@dataclass
class Case:
    """What a row's builder returns: the call to time, its check against plain, and how to turn ms into a value."""

    fn: Callable[[], Any]
    rel_err: float | None = None
    note: str = ""
    blocks: float | None = None  # blocks per call: the row reports blocks/s; None: ms per call
    profile: bool = True         # a candidate for the profile section (CUDA-graph replays are opaque to it)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after `seconds`: a row that hangs or compiles too long ends."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over its {seconds:.0f} s time box")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.sizes = QUICK if args.quick else FULL
        self.compile = args.compile == "on" or (args.compile == "auto" and self.cuda)
        self.budget = Budget(args.budget_s)
        self.rows: list[Row] = []
        self.candidates: dict[str, list[tuple[Row, Callable[[], Any]]]] = {"infer": [], "train": []}
        self.profiles: dict[str, Any] = {}
        self.temporary: list[str] = []  # folders removed at the end
        self.cfg, self.weights = self._model_source()
        self.started = time.monotonic()

    # -------------------------------------------------------------------------------------------- plumbing

    def _model_source(self) -> tuple[Config, dict[str, torch.Tensor]]:
        """The config and initial weights every configuration starts from (seeded, or a checkpoint's)."""
        if self.args.checkpoint:
            from qw.training.train.checkpoints import model_from_checkpoint

            model, cfg = model_from_checkpoint(self.args.checkpoint)
            return cfg, model.state_dict()
        cfg = load_config(self.args.preset)
        torch.manual_seed(0)
        return cfg, QWNet(cfg.model).state_dict()

    def model(self) -> QWNet:
        model = QWNet(self.cfg.model)
        model.load_state_dict(self.weights)
        return model.to(self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], Any], warmup: int, reps: int, max_s: float) -> list[float]:
        """Per-call times after warm-up: CUDA events around each call (no host sync inside the loop) or perf_counter."""
        for _ in range(warmup):
            fn()
        self.sync()
        start, times, events = time.perf_counter(), [], []
        while len(times) + len(events) < reps and (time.perf_counter() - start < max_s or len(times) + len(events) < 3):
            if self.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                events.append((begin, end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        self.sync()
        return times + [b.elapsed_time(e) for b, e in events]

    def save(self) -> None:
        if not self.args.out:
            return
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"environment": self.environment(), "sizes": asdict(self.sizes), "args": vars(self.args),
               "elapsed_s": round(time.monotonic() - self.started, 1),
               "rows": [asdict(r) | {"goal_ratio": r.goal_ratio} for r in self.rows], "profiles": self.profiles}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        os.replace(tmp, out)

    def environment(self) -> dict[str, Any]:
        env = {"torch": torch.__version__, "device": str(self.device), "cpu_cores": _cores(),
               "preset": self.cfg.preset, "checkpoint": self.args.checkpoint, "compile": self.compile}
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            env |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2 ** 30, 1),
                    "sm_count": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
        return env

    def row(self, section: str, name: str, build: Callable[[], Case], *, unit: str, plain: bool = False,
            tol: float | None = None, need_s: float = 5.0, limit_s: float = 120.0, reserve_s: float = 0.0,
            warmup: int = 3, reps: int = 30, max_s: float = 8.0, skip: str = "") -> Row:
        """Build, check and time (reps > 0) one configuration; any failure becomes the row's error.

        The row runs only if `need_s` fits in the budget after `reserve_s` (kept for later sections) and the
        profile's reserve, and is time-boxed to what is left after those.
        """
        row = Row(section, name, unit, goal=GOALS.get(section), plain=plain, tol=tol)
        self.rows.append(row)
        left = self.budget.left() - reserve_s - (0 if section == "profile" else PROFILE_RESERVE_S)
        if skip or left < need_s:
            row.error = f"skipped: {skip}" if skip else f"skipped: {left:.0f} s of budget left, needs ~{need_s:.0f} s"
            return self._done(row)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            with time_limit(min(limit_s, left)), cudnn_benchmark(not plain):
                t0 = time.perf_counter()
                case = build()
                first_s = time.perf_counter() - t0
                times = self.time_ms(case.fn, warmup, reps, max_s) if reps else []
            row.rel_err = case.rel_err
            notes = [case.note, f"first call {first_s:.1f} s" if first_s > 5 else ""]
            if times:
                median = statistics.median(times)
                row.value = case.blocks * 1e3 / median if case.blocks else median
                notes += [f"{len(times)} runs", f"spread {min(times):.3g}-{max(times):.3g} ms"]
            if self.cuda:
                notes.append(f"peak {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB")
            row.note = "; ".join(n for n in notes if n)
            if tol is not None and (case.rel_err is None or not case.rel_err <= tol):
                row.error = f"CHECK FAILED: rel err {case.rel_err} > {tol}"
            if case.profile and section in self.candidates:
                self.candidates[section].append((row, case.fn))
        except Exception as exc:  # noqa: BLE001 - a failing configuration is a result, not the end of the run
            row.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return self._done(row)

    def _done(self, row: Row) -> Row:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        status = row.error or f"{_fmt(row.value)} {row.unit}"
        print(f"[{time.monotonic() - self.started:6.1f} s] {row.section:<11} {row.name:<46} {status}", flush=True)
        self.save()
        return row

    def compile_skip(self) -> str:
        return "" if self.compile else "compile off (--compile on to include; slow on CPU)"

    # -------------------------------------------------------------------------------------------- inputs

    def frame_inputs(self, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Colour, motion and previous output of one frame: positive HDR values, a few pixels of motion."""
        g = torch.Generator().manual_seed(seed)
        color = torch.rand(1, 3, h, w, generator=g) ** 2 * 4
        motion = torch.randn(1, 2, h, w, generator=g) * 3
        previous = torch.rand(1, 3, h, w, generator=g) ** 2 * 4
        return color.to(self.device), motion.to(self.device), previous.to(self.device)

    def block_batch(self, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """n random training blocks on the device, stored precision (float16 images, bool validity)."""
        s = self.sizes
        g = torch.Generator().manual_seed(seed)
        shape = (n, s.frames)
        valid = torch.ones(shape, dtype=torch.bool)
        valid[:, 0] = False
        batch = {"color": (torch.rand(*shape, 3, s.tile, s.tile, generator=g) ** 2 * 4).half(),
                 "reference": (torch.rand(*shape, 3, s.tile, s.tile, generator=g) ** 2 * 4).half(),
                 "motion": (torch.randn(*shape, 2, s.tile, s.tile, generator=g) * 3).half(), "history_valid": valid}
        return {k: v.to(self.device) for k, v in batch.items()}

    # -------------------------------------------------------------------------------------------- sections

    def correctness(self) -> None:
        s = self.sizes
        seq = self.block_batch(2, seed=1)

        def fused_filter() -> Case:
            plain, fused = self.model().eval(), fast.fuse_filter(self.model().eval())
            with torch.no_grad():
                err = rel_err(fused(seq["color"], seq["motion"], seq["history_valid"]),
                              plain(seq["color"], seq["motion"], seq["history_valid"]))
            return Case(lambda: None, err, f"fp32, {s.frames}-step recurrence, 2 blocks {s.tile}²")

        self.row("correctness", "fused filter fp32 vs plain", fused_filter, unit="", tol=FLOAT_TOL, reps=0)
        self.row("correctness", "fp16 CL folded fused vs plain, random", lambda: self._inference_check(seq),
                 unit="", tol=HALF_TOL, reps=0)
        if self.args.store:
            self.row("correctness", "fp16 CL folded fused vs plain, store", lambda: self._inference_check(
                self._store_blocks(), f"{self.args.store}"), unit="", tol=HALF_TOL, reps=0)

    def _inference_check(self, seq: dict[str, torch.Tensor], note: str = "random blocks") -> Case:
        plain = self.model().eval()
        fast_model = fast.fold_batch_norms(fast.fuse_filter(self.model())).to(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = plain(seq["color"], seq["motion"], seq["history_valid"])
            with self.autocast(torch.float16):
                out = fast_model(fast.channels_last_frames(seq["color"]), fast.channels_last_frames(seq["motion"]),
                                 seq["history_valid"])
        return Case(lambda: None, rel_err(out, expected), f"{note}, {tuple(seq['color'].shape)}")

    def _store_blocks(self) -> dict[str, torch.Tensor]:
        from qw.training.data import BlockDataset

        dataset = BlockDataset(self.args.store)
        items = [dataset[i] for i in range(min(4, len(dataset)))]
        return {k: torch.stack([it[k] for it in items]).to(self.device) for k in ("color", "motion", "history_valid")}

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        # cache_enabled=False: autocast's weight-cast cache must not live across CUDA-graph capture.
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)

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
                case.fn = lambda: _no_grad_call(inner)
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
                loss = float(fast.train_step(model, optimizer, parts, self.cfg.model.hdr, amp))
                break
            except torch.cuda.OutOfMemoryError:
                if micro == 1:
                    raise
                micro //= 2
                gc.collect()
                torch.cuda.empty_cache()
        first = reference.setdefault("loss", loss)
        note = f"micro-batch {micro} x {len(parts)} accumulated" if len(parts) > 1 else f"batch {n}"
        return Case(lambda: fast.train_step(model, optimizer, parts, self.cfg.model.hdr, amp),
                    abs(loss - first) / abs(first), note + f"; first loss {loss:.5g}", blocks=n), micro

    def loader(self) -> None:
        workers = _cores()

        def build() -> Case:
            from torch.utils.data import DataLoader

            from qw.training.data import BlockDataset, BlockSampler

            tmp = tempfile.mkdtemp(prefix="qw-gpu-bench-")
            self.temporary.append(tmp)
            url = str(Path(tmp) / "random.zarr")
            t0 = time.perf_counter()
            _random_store(url, self.sizes, workers)
            built_s = time.perf_counter() - t0
            dataset = BlockDataset(url, augment=True)
            sampler = BlockSampler(np.arange(self.sizes.loader_blocks), seed=0)
            per_batch = self.sizes.batch
            loader = DataLoader(dataset, batch_size=per_batch, sampler=sampler, num_workers=workers,
                                pin_memory=self.cuda, persistent_workers=True, prefetch_factor=2)
            batches = fast.DevicePrefetcher(loader, self.device, channels_last=True)
            next(batches)  # workers started, first batches in flight
            rounds = 2 * workers  # two batches per worker: each worker assembles whole batches

            def fn() -> None:
                for _ in range(rounds):
                    next(batches)
                self.sync()

            shm = shutil.disk_usage("/dev/shm").free / 2 ** 30 if Path("/dev/shm").exists() else float("nan")
            note = (f"{workers} workers, batch {per_batch}, {rounds} batches per timing, store of "
                    f"{self.sizes.loader_blocks} random blocks built in {built_s:.0f} s (random data compresses "
                    f"~1.1x vs ~3.3x real); /dev/shm free {shm:.0f} GiB")
            return Case(fn, None, note, blocks=rounds * per_batch, profile=False)

        self.row("loader", "DataLoader + augment + pinned copy", build, unit="blocks/s", warmup=0, reps=2, max_s=20,
                 need_s=30, limit_s=150)

    def int8(self) -> None:
        s = self.sizes
        built: dict[str, Any] = {}

        def models() -> dict[str, Any]:
            if not built:
                from qw.training.export.qwq import exported_model, write_qwq
                from qw.training.export.integer_ref import load_integer_model
                from qw.training.quantization.fake_quant import quantize_model

                qmodel = quantize_model(self.model().cpu(), QuantConfig()).eval()
                with tempfile.TemporaryDirectory() as tmp:
                    write_qwq(Path(tmp) / "bench.qwq", exported_model(qmodel, self.cfg))
                    reference, _ = load_integer_model(Path(tmp) / "bench.qwq")
                built.update(qmodel=qmodel, reference=reference, int8=fast.int8_model(reference).to(self.device))
            return built

        def check_against_reference() -> float:
            """The integer reference runs on the CPU (int32 matmul): compare on a crop."""
            color, motion, previous = (x.cpu() for x in self.frame_inputs(s.check, s.check, seed=3))
            m = models()
            with torch.no_grad():
                expected = fast.frame_step(m["reference"], color, motion, previous)
                out = fast.frame_step(m["int8"], *(x.to(self.device) for x in (color, motion, previous)))
            return rel_err(out, expected)

        color, motion, previous = self.frame_inputs(s.height, s.width)

        def fake_quant() -> Case:
            qmodel = copy.deepcopy(models()["qmodel"]).to(self.device)
            return Case(lambda: _no_grad_call(lambda: qmodel.step(color, qmodel.warp_history(previous, motion))), None,
                        "QAT model (training/quantization/fake_quant.py) as trained: float convs on integer codes")

        def int8(graph: bool) -> Case:
            err = check_against_reference()
            model = models()["int8"]
            with torch.no_grad():
                frame = (lambda c, m, p: fast.frame_step(model, c, m, p))
                fn = fast.CudaGraphFrame(frame, color, motion, previous) if graph else frame
                fn(color, motion, previous)
            return Case(lambda: _no_grad_call(lambda: fn(color, motion, previous)), err,
                        f"vs integer reference on a {s.check}² crop", profile=not graph)

        self.row("int8", "QAT fake-quant fp32 eager (plain)", fake_quant, unit="ms", plain=True, need_s=15)
        self.row("int8", "INT8 _int_mm convs eager", lambda: int8(False), unit="ms", tol=1e-3, need_s=15)
        self.row("int8", "INT8 _int_mm convs + CUDA graph", lambda: int8(True), unit="ms", tol=1e-3, need_s=15,
                 skip="" if self.cuda else "CUDA graphs need a GPU")

    def profile(self) -> None:
        """Top kernels of the fastest inference and training rows (by self device time; CPU time on CPU)."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        for kind, rank in (("infer", min), ("train", max)):
            done = [(r, fn) for r, fn in self.candidates[kind] if r.value is not None and not r.error]
            if not done:
                continue
            best, fn = rank(done, key=lambda item: item[0].value)

            def build() -> Case:
                with profile(activities=activities) as prof:
                    for _ in range(3):
                        fn()
                    self.sync()
                self.profiles[kind] = _profile_summary(prof, self.cuda, f"{best.section}: {best.name}")
                return Case(lambda: None, None, f"of {best.section} '{best.name}', 3 calls")

            self.row("profile", f"{kind}: {best.name}", build, unit="", reps=0, need_s=10, limit_s=60)
            print(f"\n--- profile, {best.section}: {best.name} (3 calls) ---\n{self.profiles.get(kind, {}).get('table')}")
            classes = self.profiles.get(kind, {}).get("classes", {})
            print("time by kernel class: " + ", ".join(f"{k} {v:.0%}" for k, v in classes.items()) + "\n")

    # -------------------------------------------------------------------------------------------- report

    def finish(self) -> None:
        plain = {r.section: r.value for r in self.rows if r.plain and r.value}
        for r in self.rows:
            base = plain.get(r.section)
            if base and r.value and not r.plain:
                r.vs_plain = base / r.value if r.unit == "ms" else r.value / base
        self.save()
        print(self.table())
        for folder in self.temporary:
            shutil.rmtree(folder, ignore_errors=True)

    def table(self) -> str:
        env = self.environment()
        head = (f"\nQW-Net speed: {env.get('gpu', 'CPU')} ({env['device']}, torch {env['torch']}, "
                f"{env['cpu_cores']} cores), preset {env['preset']}, sizes {'quick' if self.args.quick else 'full'} "
                f"{asdict(self.sizes)}, {time.monotonic() - self.started:.0f} s")
        lines = [head, f"{'section':<11} {'configuration':<44} {'value':>9} {'unit':<8} {'goal':>6} {'goal×':>6} "
                       f"{'vs plain':>8} {'rel err':>8}  note"]
        for r in self.rows:
            if r.section == "profile":
                continue
            value = "" if r.value is None or r.section == "correctness" else _fmt(r.value)
            goal = "" if r.goal is None else ("≥" if r.unit != "ms" else "≤") + f"{r.goal:g}"
            lines.append(f"{r.section:<11} {r.name[:44]:<44} {value:>9} {r.unit if value else '':<8} {goal:>6} "
                         f"{_fmt(r.goal_ratio) if value else '':>6} {_fmt(r.vs_plain):>8} {_fmt(r.rel_err):>8}  "
                         f"{r.error + ('; ' if r.error and r.note else '') + r.note}")
        return "\n".join(lines)


def _no_grad_call(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _random_store(url: str, sizes: Sizes, threads: int) -> None:
    """A complete `qw-blocks/2` store of random blocks (all one 'train' shot), written by several threads."""
    from qw.datagen.block_store import create_store, seal

    n, t, tile = sizes.loader_blocks, sizes.frames, sizes.tile
    shots = [{"scene": "random", "shot": "s0", "split": "train"}]
    group = create_store(url, n, {"scenes": ["random"], "shots": shots, "split": {"train": ["s0"]}}, t=t, tile=tile)
    valid = np.ones((n, t), bool)
    valid[:, 0] = False
    group["history_valid"][:] = valid
    group["origin"][:] = np.zeros((n, 5), np.int32)

    def write(i: int) -> None:
        rng = np.random.default_rng(i)
        group["color"][i] = (rng.random((t, 3, tile, tile), np.float32) ** 2 * 4).astype(np.float16)
        group["reference"][i] = (rng.random((t, 3, tile, tile), np.float32) ** 2 * 4).astype(np.float16)
        group["motion"][i] = (rng.standard_normal((t, 2, tile, tile), np.float32) * 3).astype(np.float16)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(n)))
    seal(group)


KERNEL_CLASSES = (  # first match wins: Inductor/Triton, cuDNN/cuBLAS/CUTLASS, copies, ATen's eager kernels
    ("generated (triton/inductor)", re.compile(r"triton|cpp_fused|kernel_cpp|Torch-Compiled", re.I)),
    ("conv/GEMM", re.compile(r"conv|gemm|cutlass|cudnn|xmma|wgmma|sm\d+_|implicit|_mm|matmul|winograd|dgrad|wgrad",
                             re.I)),
    ("layout/copy", re.compile(r"memcpy|memset|copy|nchw|nhwc|transpose|permute|cat|pad|fill", re.I)),
    ("eager elementwise/reduce", re.compile(r"elementwise|vectorized|reduce|unrolled|softmax|pool|upsample|grid_sampl|"
                                            r"batch_norm|elu|aten::", re.I)),
)


def _profile_summary(prof: Any, cuda: bool, title: str) -> dict[str, Any]:
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70)
    except Exception:  # noqa: BLE001 - newer torch names the device column differently
        sort = "self_device_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda:
            spent = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
            if getattr(event, "device_type", None) is not None and str(event.device_type).endswith("CPU"):
                continue
        else:
            spent = event.self_cpu_time_total
            if not event.key.startswith(("aten::", "cpp_fused", "mkldnn")):
                continue
        if spent:
            name = next((label for label, pattern in KERNEL_CLASSES if pattern.search(event.key)), "other")
            totals[name] = totals.get(name, 0.0) + spent
    whole = sum(totals.values()) or 1.0
    return {"title": title, "sort": sort, "table": table,
            "classes": {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--out", help="write the results as JSON here (rewritten after every row)")
    parser.add_argument("--store", help="also check on the first blocks of this block store (real inputs)")
    parser.add_argument("--checkpoint", help="start every model from this training checkpoint's weights and config")
    parser.add_argument("--preset", default="paper", help="model preset without --checkpoint (default: paper)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile rows: auto = on for cuda, off for cpu")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget (default 460 on cuda, 900 on cpu)")
    parser.add_argument("--sections", default="correctness,infer,train,qat,loader,int8,profile",
                        help="comma-separated subset, in this order")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.budget_s = args.budget_s or (460.0 if args.device == "cuda" else 900.0)
    if hasattr(torch._dynamo.config, "cache_size_limit"):  # one graph per compiled model is expected; room for more
        torch._dynamo.config.cache_size_limit = 64
    bench = Bench(args)
    wanted = args.sections.split(",")
    sections = {"correctness": bench.correctness, "infer": bench.inference, "train": lambda: bench.training(False),
                "qat": lambda: bench.training(True), "loader": bench.loader, "int8": bench.int8,
                "profile": bench.profile}
    unknown = set(wanted) - set(sections)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)} (known: {', '.join(sections)})")
    for name, run in sections.items():
        if name in wanted:
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - setup of a section failed: report it, go on with the next
                bench.rows.append(Row(name, "(section setup)", "", error=f"{type(exc).__name__}: {exc}"[:300]))
                bench._done(bench.rows[-1])
    bench.finish()


if __name__ == "__main__":
    main()
