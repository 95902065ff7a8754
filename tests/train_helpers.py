"""Shared helpers of the training tests: small synthetic `qw-blocks/2` stores with exact, known motion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qw.datagen.block_store import create_store, seal, synthetic_attrs


def texture(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth positive RGB texture as a sum of random sinusoids, defined at any real (x, y): (3, *x.shape)."""
    out = np.full((3,) + x.shape, 0.6)
    for _ in range(6):
        fx, fy = rng.uniform(-0.1, 0.1, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.05, 0.3, 3)[:, None, None]
        out = out + amp * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    return np.clip(out, 0.0, None)


def synthetic_block(rng: np.random.Generator, t: int, tile: int, cut: int | None = None) -> dict[str, np.ndarray]:
    """A translating texture: frame k is base(p − k·v), so motion (current − previous) is v everywhere.

    The aliased input is the reference plus noise; a camera cut at frame `cut` restarts with a new texture.
    """
    v = rng.uniform(-3, 3, 2)
    ys, xs = np.mgrid[0:tile, 0:tile] + 0.5
    seeds = rng.integers(1 << 30, size=2)
    ref = np.stack([texture(xs - k * v[0], ys - k * v[1], np.random.default_rng(seeds[int(cut is not None and k >= cut)]))
                    for k in range(t)])
    color = np.clip(ref + rng.normal(0, 0.15, ref.shape), 0, None)
    motion = np.broadcast_to(v[None, :, None, None], (t, 2, tile, tile))
    valid = np.ones(t, bool)
    valid[0] = False
    if cut is not None:
        valid[cut] = False
    return {"color": color, "reference": ref, "motion": motion, "history_valid": valid}


def make_store(path: Path, n_train: int = 8, n_val: int = 2, t: int = 4, tile: int = 32, seed: int = 0,
               complete: bool = True, cut_every: int = 0, nan_block: int | None = None) -> str:
    """A complete store with shot 0 in 'train' and shot 1 in 'val'; every `cut_every`-th block has a camera cut.

    `nan_block`: the red channel of that block's last reference frame is NaN (poisoned data that reads fine)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    attrs = synthetic_attrs([("synthetic", "train", "train"), ("synthetic", "val", "val")])
    group = create_store(str(path), n, attrs, t=t, tile=tile)
    for i in range(n):
        block = synthetic_block(rng, t, tile, cut=t // 2 if cut_every and i % cut_every == 0 else None)
        if i == nan_block:
            block["reference"][-1, 0] = np.nan
        for name in ("color", "reference", "motion"):
            group[name][i] = block[name].astype(np.float16)
        group["history_valid"][i] = block["history_valid"]
        group["origin"][i] = [0, int(i >= n_train), 0, 0, 0]
    if complete:
        seal(group)
    return str(path)


def write_checkpoint(path: Path, cfg, quantized: bool = False, seed: int = 0) -> Path:
    """A `qw-checkpoint/1` file of an untrained QW-Net of `cfg` (quantized per `cfg.quant` when asked), holding what
    `qw infer`, `qw eval` and `qw export` read: quick to make for tests that need a model of a given shape."""
    import torch

    from qw.training.model.qwnet import QWNet
    from qw.training.quantization.fake_quant import quantize_model
    from qw.training.train.checkpoints import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(seed)
    model = QWNet(cfg.model).eval()
    if quantized:
        model = quantize_model(model, cfg.quant)
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                           "config": cfg.model_dump(mode="json")})
    return path


def small_shot(root: Path, frames: int = 3, resolution: tuple[int, int] = (64, 48)) -> Path:
    """A small real builtin capture (jittered, as every builtin capture is); the pixels do not matter."""
    from qw.capture import capture_scene

    return capture_scene("builtin_fence", root, shots=["rise"], frames=(0, frames), resolution=resolution,
                         reference_spp=1, progress=False)[0]
