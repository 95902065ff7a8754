"""Captured shots (contract 1, `qw-capture/1`) as a PyTorch Dataset of full-resolution frame sequences.

The block store holds 256×256 crops; fine-tuning at full resolution, or looking at whole frames in a notebook,
reads the captures themselves. Each item is a window of consecutive frames of one shot with the same keys and
layout as a block of `qw.training.data.BlockDataset` (images (T, C, H, W), ``history_valid`` (T,)), so code written
for blocks runs on it unchanged. Frames are decoded when an item is read (nothing is cached), and the dataset holds
only paths and capture metadata, so it can be handed to DataLoader worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from qw.datagen.capture_format import PASSES, CaptureMeta, find_captures, load_meta, read_frame
from qw.datagen.errors import QwError
from qw.training.data import FLOAT16_MAX

DEFAULT_PASSES = ("color", "reference", "motion")  # what QW-Net reads; add "depth" when it is wanted


@dataclass(frozen=True)
class Window:
    """Frames [start, start + length) of the shot at `shot`."""

    shot: Path
    start: int
    length: int


class CapturedSequences(Dataset):
    """Windows of `frames` consecutive frames (every `stride` frames; None: each shot whole) of every complete shot
    at or below `captures` (one path or several), at full resolution.

    An item is a dict: the `passes` as (T, C, H, W) tensors of `dtype` (float16 clips to ±65504 as the block store
    does), ``history_valid`` (T,) bool (False on the window's first frame and on camera cuts), ``jitter`` (T, 2)
    float32 pixels, ``shot`` (the shot directory) and ``start`` (the first frame). Shots shorter than `frames` are
    left out. Batching needs shots of one resolution.
    """

    def __init__(self, captures: str | os.PathLike | Iterable[str | os.PathLike], frames: int | None = 8,
                 stride: int | None = None, passes: Iterable[str] = DEFAULT_PASSES,
                 dtype: torch.dtype = torch.float16):
        roots = [captures] if isinstance(captures, (str, os.PathLike)) else list(captures)
        self.passes, self.dtype = tuple(passes), dtype
        unknown = [p for p in self.passes if p not in PASSES]
        if unknown:
            raise QwError(f"unknown pass(es) {unknown}; captures hold {list(PASSES)}")
        if (frames is not None and frames < 1) or (stride is not None and stride < 1):
            raise QwError(f"frames ({frames}) and stride ({stride}) must be at least 1")
        shots = [shot for root in roots for shot in find_captures(root)]
        if not shots:
            raise QwError(f"no complete captured shot (a folder with capture.json) at or below {roots}")
        self.metas: dict[Path, CaptureMeta] = {shot: load_meta(shot) for shot in shots}
        self.windows = [w for shot, meta in self.metas.items() for w in _windows(shot, meta, frames, stride)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        window = self.windows[index]
        meta = self.metas[window.shot]
        frames = range(window.start, window.start + window.length)
        item: dict[str, torch.Tensor | str | int] = {
            name: torch.from_numpy(np.stack([self._image(window.shot, name, i) for i in frames]))
            for name in self.passes}
        valid = meta.history_valid()[window.start:window.start + window.length].copy()
        valid[0] = False  # the window's first frame has no history inside the window
        item["history_valid"] = torch.from_numpy(valid)
        item["jitter"] = torch.from_numpy(meta.jitter_array()[window.start:window.start + window.length])
        item["shot"], item["start"] = str(window.shot), window.start
        return item

    def _image(self, shot: Path, name: str, index: int) -> np.ndarray:
        """(C, H, W) frame of one pass in the dataset's dtype."""
        meta = self.metas[shot]  # the size capture.json says: a frame of another size is named, not a stack error
        image = read_frame(shot, name, index, (meta.width, meta.height)).transpose(2, 0, 1)
        if self.dtype == torch.float16:
            return np.clip(image, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return image.astype(torch.empty((), dtype=self.dtype).numpy().dtype)


def _windows(shot: Path, meta: CaptureMeta, frames: int | None, stride: int | None) -> list[Window]:
    length = frames or meta.frame_count
    step = stride or length
    return [Window(shot, start, length) for start in range(0, meta.frame_count - length + 1, step)]
