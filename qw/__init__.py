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
"""

from datagen import __version__
from datagen.block_store import BlockStore, open_store
from datagen.capture import capture_scene
from datagen.cluster import dask_client
from datagen.errors import QwError
from datagen.tile import build_store
from training.data import BlockDataset, BlockSampler
from training.infer import reconstruct_shot
from training.quantize import model_from_any_checkpoint as load_checkpoint
from training.sequences import CapturedSequences

__all__ = ["BlockDataset", "BlockSampler", "BlockStore", "CapturedSequences", "QwError", "__version__",
           "build_store", "capture_scene", "dask_client", "load_checkpoint", "open_store", "reconstruct_shot"]
