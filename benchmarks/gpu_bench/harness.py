"""What every section of benchmarks/gpu.py shares: sizes, rows, time limits, the model, inputs, timing,
the results file and the table."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from qw.training.config import Config, load_config
from qw.training.model.qwnet import QWNet


GOALS = {"train": 400.0, "qat": 200.0, "loader": 400.0, "infer": 2.0, "int8": 2.0}


HALF_TOL = 3e-2      # fp16/bf16 arithmetic against fp32 (bf16 operands land between 1e-3 and 1e-2)


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


class Harness:
    """Runs rows: builds a case, checks it against its reference, times it, records it; prints the table."""

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
        env = {"torch": torch.__version__, "device": str(self.device), "cpu_cores": cpu_cores(),
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

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        # cache_enabled=False: autocast's weight-cast cache must not live across CUDA-graph capture.
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)

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


def no_grad_call(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
