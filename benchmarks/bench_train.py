"""Training throughput: forward+backward blocks/s of QW-Net vs the DataLoader's blocks/s, side by side.

    python benchmarks/bench_train.py                       # CPU: small batch, synthetic store in a temp dir
    python benchmarks/bench_train.py --store blocks.zarr --batch 64 --amp bf16 --channels-last --compile   # GPU

Model rows time the full 8-step recurrence + loss + backward + Ranger step on random 256×256×8 blocks already on
the device. Loader rows iterate the real Dataset/DataLoader (lazy zarr open per worker, float16) over a store.
Whichever is lower limits training. Nothing here is asserted; numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_optimizer import Ranger
from torch.utils.data import DataLoader

from qw.datagen.block_store import TILE, T, create_store, seal
from qw.training.model import fast
from qw.training.config import load_config
from qw.training.data import BlockDataset, BlockSampler, open_training_store
from qw.training.model.qwnet import QWNet


def synthetic_store(path: Path, blocks: int, seed: int = 0) -> str:
    """A complete store of random-but-compressible blocks (smooth noise) with a 'train' split."""
    rng = np.random.default_rng(seed)
    shots = [{"scene": "bench", "shot": "s", "split": "train"}]
    group = create_store(str(path), blocks, {"scenes": ["bench"], "shots": shots, "split": {"train": ["s"]}})
    base = rng.random((T, 3, TILE // 8, TILE // 8), dtype=np.float32)
    for i in range(blocks):
        img = np.kron(base * rng.uniform(0.5, 2.0), np.ones((8, 8), np.float32)) + rng.normal(0, 0.02, (T, 3, TILE, TILE))
        group["color"][i] = img.astype(np.float16)
        group["reference"][i] = img.astype(np.float16)
        group["motion"][i] = rng.normal(0, 2, (T, 2, TILE, TILE)).astype(np.float16)
        group["history_valid"][i] = np.arange(T) > 0
    seal(group)
    return str(path)


def bench_model(preset: str, batch: int, steps: int, device: torch.device, amp: str, channels_last: bool,
                compile_model: bool) -> float:
    cfg = load_config(preset)
    model = QWNet(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = fast.compile_step(model)  # what `train.compile: true` compiles
    optimizer = Ranger(model.parameters(), lr=cfg.train.lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    color = torch.rand(batch, T, 3, TILE, TILE, device=device).half()
    batch_data = {"color": color, "reference": color,
                  "motion": torch.randn(batch, T, 2, TILE, TILE, device=device).half(),
                  "history_valid": (torch.arange(T, device=device) > 0).expand(batch, T)}

    def one_step() -> None:
        fast.train_step(model, optimizer, [batch_data], cfg.model.hdr, dtype)

    for _ in range(2):  # warm-up (and compilation)
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def bench_loader(url: str, workers: int, batch: int, batches: int) -> float:
    store = open_training_store(url)
    dataset = BlockDataset(url, augment=True)
    loader = DataLoader(dataset, batch_size=batch, sampler=BlockSampler(store.split_indices("train"), seed=0),
                        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
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
    args = parser.parse_args()
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
