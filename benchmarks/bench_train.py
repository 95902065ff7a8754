"""Training throughput: forward+backward blocks/s of QW-Net vs the DataLoader's blocks/s, side by side.

    python benchmarks/bench_train.py                       # CPU: small batch, synthetic store in a temp dir
    python benchmarks/bench_train.py --store blocks.zarr --batch 64 --amp bf16 --channels-last --compile   # GPU
    python benchmarks/bench_train.py --cpu-variants --steps 3 --rounds 3   # demo config: eager/channels_last/compile

Model rows time the full 8-step recurrence + loss + backward + Ranger step on random 256×256×8 blocks already on
the device. Loader rows iterate the real Dataset/DataLoader (lazy zarr open per worker, float16) over a store.
Whichever is lower limits training. Nothing here is asserted; numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pytorch_optimizer import Ranger
from torch.utils.data import DataLoader

from qw.datagen.block_store import TILE, T, create_store, seal, synthetic_attrs
from qw.training.model import fast
from qw.training.config import Config, load_config
from qw.training.data import BlockDataset, BlockSampler, open_training_store
from qw.training.model.qwnet import QWNet


def synthetic_store(path: Path, blocks: int, seed: int = 0) -> str:
    """A complete store of random-but-compressible blocks (smooth noise) with a 'train' split."""
    rng = np.random.default_rng(seed)
    group = create_store(str(path), blocks, synthetic_attrs([("bench", "s", "train")]))
    base = rng.random((T, 3, TILE // 8, TILE // 8), dtype=np.float32)
    for i in range(blocks):
        img = np.kron(base * rng.uniform(0.5, 2.0), np.ones((8, 8), np.float32)) + rng.normal(0, 0.02, (T, 3, TILE, TILE))
        group["color"][i] = img.astype(np.float16)
        group["reference"][i] = img.astype(np.float16)
        group["motion"][i] = rng.normal(0, 2, (T, 2, TILE, TILE)).astype(np.float16)
        # every image array stored: an absent chunk reads as zeros, and `qw datagen verify` would not decode it
        group["depth"][i] = (img[:, :1] * 10).astype(np.float16)
        group["history_valid"][i] = np.arange(T) > 0
    seal(group)
    return str(path)


def model_step(cfg: Config, tile: int, batch: int, device: torch.device, amp: str, channels_last: bool,
               compile_model: bool) -> Callable[[], None]:
    """One training step (8-step recurrence + loss + backward + Ranger) of a fresh model on random blocks already
    on the device, warmed up (and compiled) twice."""
    model = QWNet(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = fast.compile_step(model)  # what `train.compile: true` compiles
    optimizer = Ranger(model.parameters(), lr=cfg.train.lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    color = torch.rand(batch, T, 3, tile, tile, device=device).half()
    images = {"color": color, "reference": color, "motion": torch.randn(batch, T, 2, tile, tile, device=device).half()}
    if channels_last:  # as DevicePrefetcher hands them over
        images = {k: fast.channels_last_frames(v) for k, v in images.items()}
    batch_data = {**images, "history_valid": (torch.arange(T, device=device) > 0).expand(batch, T)}

    def one_step() -> None:
        fast.train_step(model, optimizer, [batch_data], cfg.loss, dtype)

    for _ in range(2):  # warm-up (and compilation)
        one_step()
    return one_step


def time_steps(step: Callable[[], None], steps: int, batch: int, device: torch.device) -> float:
    """Blocks/s of `steps` calls of `step`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def bench_model(preset: str, batch: int, steps: int, device: torch.device, amp: str, channels_last: bool,
                compile_model: bool) -> float:
    step = model_step(load_config(preset), TILE, batch, device, amp, channels_last, compile_model)
    return time_steps(step, steps, batch, device)


CPU_VARIANTS = {  # name: (channels_last, compiled)
    "eager (today)": (False, False),
    "eager, channels_last": (True, False),
    "torch.compile": (False, True),
    "torch.compile, channels_last": (True, True),
}


def cpu_variants(rounds: int, steps: int, threads: list[int], compiled: bool = True) -> list[tuple[str, str, str]]:
    """The demo configuration (quarter-width paper model, batch 4 of 8x64x64 blocks) on CPU: each variant x thread
    count timed once per round, interleaved; median and range of blocks/s and the ratio to eager at the same
    thread count in the same round."""
    from qw.demo import DemoPlan, demo_config

    plan = DemoPlan()
    cfg, device = demo_config(plan, 1), torch.device("cpu")
    torch.manual_seed(0)
    variants = {}
    for n in threads:  # set before compiling: inductor's CPU kernels fix their thread count when generated
        torch.set_num_threads(n)
        for name, flags in CPU_VARIANTS.items():
            if compiled or not flags[1]:
                variants[name, n] = model_step(cfg, 64, plan.batch_size, device, "off", *flags)
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for (name, n), step in variants.items():
            torch.set_num_threads(n)
            rates[name, n].append(time_steps(step, steps, plan.batch_size, device))
    rows = []
    for (name, n), values in rates.items():
        base = rates["eager (today)", n]
        ratio = statistics.median(v / b for v, b in zip(values, base))
        rows.append((f"{name}, {n} thread(s)", f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})",
                     f"{ratio:.2f}"))
    return rows


def bench_loader(url: str, workers: int, batch: int, batches: int) -> float:
    store = open_training_store(url)
    dataset = BlockDataset(url, augment=True)
    loader = DataLoader(dataset, batch_size=batch, sampler=BlockSampler(store.split_indices("train"), seed=0),
                        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        pin_memory=torch.cuda.is_available())  # as training's loader on a GPU
    it = iter(loader)
    next(it)  # worker start-up and the first open are not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=2, help="blocks per forward+backward (64 on a big GPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--store", help="block store to read (default: a synthetic one in a temp dir)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU; default: torch's choice)")
    parser.add_argument("--cpu-variants", action="store_true",
                        help="only: the demo configuration on CPU, eager vs channels_last vs torch.compile, per "
                             "thread count (--variant-threads), interleaved over --rounds")
    parser.add_argument("--variant-threads", default="1,2")
    parser.add_argument("--no-compile", action="store_true", help="--cpu-variants without the torch.compile ones")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.cpu_variants:
        rows = cpu_variants(args.rounds, args.steps, [int(n) for n in args.variant_threads.split(",")],
                            not args.no_compile)
        print(f"\ndemo configuration, fwd+bwd+Ranger step, batch 4 of 8x64x64 blocks, CPU, {args.rounds} rounds\n")
        print(f"| {'variant':<36} | {'blocks/s median (range)':>24} | vs eager, same threads |\n|{'-' * 38}|"
              f"{'-' * 25}:|-----------------------:|")
        for name, value, ratio in rows:
            print(f"| {name:<36} | {value:>24} | {ratio:>22} |")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or synthetic_store(Path(tmp) / "bench.zarr", blocks=max(16, args.batch * 4))
        for workers in (int(w) for w in args.workers.split(",")):
            rate = bench_loader(url, workers, args.batch, args.loader_batches)
            rows.append((f"data loader, {workers} workers, batch {args.batch}", rate))
    rate = bench_model(args.preset, args.batch, args.steps, device, args.amp, args.channels_last, args.compile)
    rows.append((f"{args.preset} fwd+bwd+step, batch {args.batch}, {device.type}, amp {args.amp}"
                 f"{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''}", rate))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n256x256x8 blocks on {name}\n{'what':70} {'blocks/s':>10}")
    for what, value in rows:
        print(f"{what:70} {value:>10.2f}")


if __name__ == "__main__":
    main()
