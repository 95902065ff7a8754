"""qw's Python API, for notebooks and scripts: the functions the `qw` command is built on.

Data::

    qw.capture_scene("builtin_fence", "captures", resolution="640x360")     # render a builtin scene's shots
    qw.build_store("manifests/datasets/builtin-all.yaml", "captures", "blocks.zarr", cluster="local")
    blocks = qw.BlockDataset("blocks.zarr", crop=128)          # torch Dataset of 8-frame 256² blocks
    store = qw.open_store("blocks.zarr")                        # the store itself: attrs, split_indices, read_block
    clips = qw.CapturedSequences("captures", frames=8)          # torch Dataset of full-resolution captured windows

Models::

    model, config, quantized = qw.load_checkpoint("runs/paper/last.pt")   # qw train / qw quantize checkpoints
    for index, image in qw.reconstruct_shot(model, "captures/builtin_fence/rise"):
        ...                                                     # H×W×3 float32 linear HDR, one frame at a time

Every function raises `qw.QwError` (one line naming the file and the problem) on bad input. See docs/python-api.md.
The names are loaded on first use, so `import qw` (and the `qw` command's startup) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, name in that module)
_API = {
    "__version__": ("qw.datagen", "__version__"),
    "BlockStore": ("qw.datagen.block_store", "BlockStore"),
    "open_store": ("qw.datagen.block_store", "open_store"),
    "capture_scene": ("qw.capture", "capture_scene"),
    "dask_client": ("qw.datagen.cluster", "dask_client"),
    "QwError": ("qw.datagen.errors", "QwError"),
    "build_store": ("qw.datagen.tile", "build_store"),
    "BlockDataset": ("qw.training.data", "BlockDataset"),
    "BlockSampler": ("qw.training.data", "BlockSampler"),
    "reconstruct_shot": ("qw.training.infer", "reconstruct_shot"),
    "load_checkpoint": ("qw.training.quantization.qat", "model_from_any_checkpoint"),
    "CapturedSequences": ("qw.training.sequences", "CapturedSequences"),
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'qw' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
