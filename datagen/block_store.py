"""Contract 2, `qw-blocks/1`: the training block store (a Zarr v3 group, local path or any fsspec URL).

=================  =====================  =========  ==========================================
array              shape                  dtype      meaning
=================  =====================  =========  ==========================================
``color``          (N, T, 3, 256, 256)    float16    aliased input (linear HDR)
``reference``      (N, T, 3, 256, 256)    float16    supersampled reference (linear HDR)
``motion``         (N, T, 2, 256, 256)    float16    pixels, full-frame scale, current − previous
``depth``          (N, T, 1, 256, 256)    float16    planar view depth
``jitter``         (N, T, 2)              float32    sample offset from the pixel centre, pixels
``origin``         (N, 5)                 int32      scene, shot, first frame, y, x
``history_valid``  (N, T)                 bool       False on a block's first frame and after cuts
=================  =====================  =========  ==========================================

Image arrays are chunked one block per chunk, so a writer owns whole chunks and a reader fetches one chunk per
block. The group attributes hold the provenance (see `REQUIRED_ATTRS`); ``complete`` is set last, by the builder,
and `open_store` refuses an incomplete store unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from datagen import __version__
from datagen.errors import QwError

FORMAT_NAME = "qw-blocks"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
T, TILE = 8, 256


@dataclass(frozen=True)
class ArraySpec:
    name: str
    channels: int | None  # None: per-frame scalar/vector array without image planes
    dtype: str

    def shape(self, n: int, t: int = T, tile: int = TILE) -> tuple[int, ...]:
        return (n, t, self.channels, tile, tile) if self.channels else _small_shape(self.name, n, t)

    def chunks(self, t: int = T, tile: int = TILE) -> tuple[int, ...]:
        # Image arrays: one block per chunk. Small arrays: 1024 blocks per chunk (few files, cheap to read whole).
        return (1, t, self.channels, tile, tile) if self.channels else (1024,) + _small_shape(self.name, 1, t)[1:]


def _small_shape(name: str, n: int, t: int) -> tuple[int, ...]:
    return {"jitter": (n, t, 2), "origin": (n, 5), "history_valid": (n, t)}[name]


ARRAYS: dict[str, ArraySpec] = {
    a.name: a
    for a in (
        ArraySpec("color", 3, "float16"),
        ArraySpec("reference", 3, "float16"),
        ArraySpec("motion", 2, "float16"),
        ArraySpec("depth", 1, "float16"),
        ArraySpec("jitter", None, "float32"),
        ArraySpec("origin", None, "int32"),
        ArraySpec("history_valid", None, "bool"),
    )
}
IMAGE_ARRAYS = tuple(n for n, a in ARRAYS.items() if a.channels)
ORIGIN_FIELDS = ("scene", "shot", "first_frame", "y", "x")
REQUIRED_ATTRS = ("format", "block_shape", "conventions", "scenes", "shots", "split", "qw_version", "codec")

CONVENTIONS = {
    "color": "linear HDR, 1 sample per pixel at pixel centre + jitter",
    "reference": "linear HDR, supersampled, unjittered",
    "motion": "pixels at full-frame scale, +x right, +y down, current minus previous: p was at p - m(p)",
    "depth": "planar view depth, scene units; beyond the float16 range (sky) clipped to 65504",
    "jitter": "sample offset from the pixel centre in pixels, +x right, +y down",
    "origin": "scene index, shot index, first source frame (stored-frame index), tile y, tile x",
    "history_valid": "False where the previous frame is not this frame's history (block start, camera cut)",
}


def default_codec(typesize: int = 2) -> BloscCodec:
    """blosc-zstd level 5 with bit shuffle: ~3.3× on float16 frames, lossless.

    `typesize` is the element size the shuffle works on; zarr would set it per array anyway, so it is set here
    explicitly to make the recorded ``codec`` attribute the configuration the chunks were really written with.
    """
    return BloscCodec(typesize=typesize, cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle)


def _storage_options(url: str, storage_options: dict | None) -> dict | None:
    return storage_options if "://" in url else None


def store_filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of a store URL (storage options apply to remote URLs only)."""
    return fsspec.core.url_to_fs(url, **(_storage_options(url, storage_options) or {}))


def create_store(url: str, n_blocks: int, attrs: dict[str, Any], *, t: int = T, tile: int = TILE,
                 storage_options: dict | None = None) -> zarr.Group:
    """Create (or overwrite) an empty store with every array of the contract; ``complete`` is False.

    The group and all its attributes are written first, in one write, so an interrupted creation still leaves a
    store that says what it is (and is recreated by the builder) rather than an anonymous folder.
    """
    image_codec = default_codec(np.dtype(ARRAYS["color"].dtype).itemsize)
    group = zarr.open_group(url, mode="w", storage_options=_storage_options(url, storage_options), attributes={
        "format": FORMAT, "block_shape": [t, tile, tile], "conventions": CONVENTIONS,
        "codec": image_codec.to_dict(), "qw_version": __version__, **attrs, "complete": False,
    })
    for spec in ARRAYS.values():
        group.create_array(spec.name, shape=spec.shape(n_blocks, t, tile), chunks=spec.chunks(t, tile),
                           dtype=spec.dtype, compressors=default_codec(np.dtype(spec.dtype).itemsize),
                           fill_value=0)
    return group


@dataclass
class BlockStore:
    """Read access to a `qw-blocks/1` store. Arrays are opened lazily, one handle per process."""

    url: str
    group: zarr.Group
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)  # handles opened so far

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def num_blocks(self) -> int:
        return int(self.group["origin"].shape[0])

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def array(self, name: str) -> zarr.Array:
        """The named array, opened once (each open reads its metadata: a round trip on object storage)."""
        if name not in self._arrays:
            if name not in self.group:
                raise QwError(f"{self.url}: block store has no array {name!r} "
                              f"(has {sorted(self.group.array_keys())})")
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def origins(self) -> np.ndarray:
        return self.array("origin")[:]

    def split_indices(self, split: str) -> np.ndarray:
        """Indices of the blocks whose shot belongs to `split` ('train', 'val', 'test')."""
        shot_split = np.array([s["split"] for s in self.attrs["shots"]])
        origins = self.origins()
        return np.flatnonzero(shot_split[origins[:, 1]] == split) if len(origins) else np.zeros(0, np.int64)

    def read_block(self, index: int, arrays: Iterable[str] = ("color", "reference", "motion", "jitter",
                                                               "history_valid")) -> dict[str, np.ndarray]:
        """One block as numpy arrays in their stored dtypes (float16 images stay float16)."""
        return {name: self.array(name)[index] for name in arrays}


def open_store(url: str, *, mode: str = "r", require_complete: bool = True,
               storage_options: dict | None = None) -> BlockStore:
    """Open a store and check its format; by default refuse one that is not marked complete."""
    try:
        group = zarr.open_group(url, mode=mode, storage_options=_storage_options(url, storage_options))
    except Exception as exc:  # zarr raises several types for a missing or foreign path
        raise QwError(f"{url}: not a qw block store ({type(exc).__name__}: {exc})") from None
    fmt = str(group.attrs.get("format", ""))
    name, _, ver = fmt.partition("/")
    if name != FORMAT_NAME or not ver.isdigit():
        raise QwError(f"{url}: not a qw block store (format attribute is {fmt or 'missing'!r})")
    if int(ver) > FORMAT_VERSION:
        raise QwError(f"{url}: store format {fmt} is newer than this qw reads ({FORMAT}); upgrade qw")
    missing = [a for a in REQUIRED_ATTRS if a not in group.attrs]
    if missing:
        raise QwError(f"{url}: block store attributes missing: {missing}")
    store = BlockStore(url, group)
    if require_complete and not store.complete:
        raise QwError(f"{url}: block store is incomplete (the build did not finish); rerun `qw datagen build`")
    return store
