"""Contract 2, `qw-blocks/2`: the training block store (a Zarr v3 group, local path or any fsspec URL).

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
``checksum``       (N, 4)                 uint32     crc32c of each image array's block (columns: IMAGE_ARRAYS)
=================  =====================  =========  ==========================================

Image arrays are chunked one block per chunk, so a writer owns whole chunks and a reader fetches one chunk per
block. The sharded layout (``create_store(inner_chunk=64)``, `qw datagen build --inner-chunk 64`) keeps one block
per file (a zarr v3 shard, still written whole by one writer) but splits it into inner chunks of
``inner_chunk``² pixels × all frames and channels, so a crop reads and decodes only the inner chunks it overlaps;
each inner chunk carries its own crc32c (zarr's crc32c codec, checked on every decode) and the shard's index has
one too. Chunk keys are flat (``color/c.<block>.0.0.0.0``): one file per chunk in its array's folder. Stores from
earlier qw versions have zarr's nested keys (``color/c/<block>/0/0/0/0``); readers take the layout from each
array's metadata, so both read alike. The group attributes hold the provenance (see `REQUIRED_ATTRS`, with the
structure `StoreAttrs` that `open_store` checks); ``complete`` is set last, by `seal`, and `open_store` refuses an
incomplete store unless asked.

Integrity (version 2): the writer records the crc32c of every block it writes, computed from the block it has in
hand (no extra pass), in ``checksum``; `seal` adds the crc32c of each small array to the ``integrity`` attribute.
`BlockStore.read_block` checks every block it returns against them, so a missing chunk (which zarr would read as
fill values), a truncated chunk or an altered byte is an error naming the block, never numbers. Version 1 stores
(no checksums) are still read, unverified, with a warning.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Awaitable, Iterable, Sequence, TypeVar

import fsspec
import google_crc32c  # a dependency of zarr (its crc32c codec); hardware crc32c, ~5 GB/s
import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec
from zarr.core.sync import sync as zarr_sync  # runs a coroutine on zarr's own event loop

from qw.datagen import __version__
from qw.datagen import checked_blosc  # noqa: F401  (reads Blosc chunks through the header-checking decoder)
from qw.datagen.errors import QwError
from qw.datagen.manifests import SPLITS, Split

FORMAT_NAME = "qw-blocks"
FORMAT_VERSION = 2  # 2 added block checksums; 1 is still read (unverified)
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
T, TILE = 8, 256
Value = TypeVar("Value")
CHECKSUMS = "checksum"
# zarr's default '/' separator nests a folder per chunk index: ~220k folders in a 13712-block store, which every
# listing, copy and delete walks. With '.' an array is one folder of files.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
log = logging.getLogger(__name__)


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
    return {"jitter": (n, t, 2), "origin": (n, 5), "history_valid": (n, t), CHECKSUMS: (n, len(IMAGE_ARRAYS))}[name]


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
        ArraySpec(CHECKSUMS, None, "uint32"),
    )
}
IMAGE_ARRAYS = tuple(n for n, a in ARRAYS.items() if a.channels)
SMALL_ARRAYS = tuple(n for n, a in ARRAYS.items() if not a.channels)
ORIGIN_FIELDS = ("scene", "shot", "first_frame", "y", "x")
REQUIRED_ATTRS = ("format", "block_shape", "conventions", "scenes", "shots", "split", "qw_version", "codec")


class _Attrs(BaseModel):
    # strict: readers use the raw attributes, so what passes must already have the types they use ("8" is no int);
    # other keys are ignored, so a store with more provenance than this still opens
    model_config = ConfigDict(strict=True, extra="ignore")


class SceneAttrs(_Attrs):
    """A row of the ``scenes`` table (`Plan.scene_table`); ``origin[:, 0]`` indexes the table."""
    name: str
    budget: int | None = None


class ShotAttrs(_Attrs):
    """A row of the ``shots`` table (`Plan.shot_table`); ``origin[:, 1]`` indexes the table."""
    scene: str
    shot: str
    split: Split
    path: str
    width: int
    height: int
    frame_count: int
    capture_sha256: str


class CodecAttrs(_Attrs):
    name: str
    configuration: dict[str, Any]


class StoreAttrs(_Attrs):
    """The structure of the group attributes that readers rely on (`REQUIRED_ATTRS` plus the optional ``dataset``):
    `open_store` refuses a store whose attributes do not have it, in one line naming the attribute."""
    format: str
    block_shape: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]
    conventions: dict[str, Any]
    codec: CodecAttrs
    qw_version: str
    scenes: list[SceneAttrs]
    shots: list[ShotAttrs]
    split: dict[str, Any]
    dataset: dict[str, Any] = {}


def synthetic_attrs(shots: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Provenance attributes for `create_store` of a store written without a plan (tests, benchmarks): the scene
    and shot tables of `shots` (scene, shot, split), in table order, with the builder's structure; the capture
    fields (path, size, sha256) are placeholders, as there is no capture."""
    scenes = list(dict.fromkeys(scene for scene, _, _ in shots))
    return {"scenes": [{"name": scene, "budget": None} for scene in scenes],
            "shots": [{"scene": scene, "shot": shot, "split": split, "path": f"{scene}/{shot}", "width": 0,
                       "height": 0, "frame_count": 0, "capture_sha256": ""} for scene, shot, split in shots],
            "split": {"unit": "shot"}}


def check_attrs(url: str, attrs: dict[str, Any]) -> None:
    """Refuse attributes without the structure of `StoreAttrs`: one line naming the store and the attribute, not a
    TypeError or KeyError in whichever reader first uses it."""
    try:
        StoreAttrs.model_validate(attrs)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in first["loc"]).lstrip(".")
        # pydantic names its model class for a table row that is not a mapping: say what the attribute should be
        problem = "Input should be a mapping" if first["type"] == "model_type" else first["msg"]
        got = "" if first["type"] == "missing" else f", got {json.dumps(first['input'], default=str)[:60]}"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise QwError(f"{url}: block store attribute {where} is malformed ({problem}{got}){more}; rebuild "
                      f"the store with `qw datagen build`") from None


CONVENTIONS = {
    "color": "linear HDR, 1 sample per pixel at pixel centre + jitter",
    "reference": "linear HDR, supersampled, unjittered",
    "motion": "pixels at full-frame scale, +x right, +y down, current minus previous: p was at p - m(p)",
    "depth": "planar view depth, scene units; beyond the float16 range (sky) clipped to 65504",
    "jitter": "sample offset from the pixel centre in pixels, +x right, +y down",
    "origin": "scene index, shot index, first source frame (stored-frame index), tile y, tile x",
    "history_valid": "False where the previous frame is not this frame's history (block start, camera cut)",
    CHECKSUMS: "crc32c of the raw C-order bytes of each block of color, reference, motion, depth (in that order)",
}


def default_codec(typesize: int = 2) -> BloscCodec:
    """blosc-zstd level 1 with byte shuffle, lossless: on rendered 1080p blocks 8× cheaper to encode than level 5 with
    bit shuffle and 13% smaller (3.99× vs 3.54×, `benchmarks/bench_codecs.py`); compression dominates a build's CPU.

    `typesize` is the element size the shuffle works on; zarr would set it per array anyway, so it is set here
    explicitly to make the recorded ``codec`` attribute the configuration the chunks were really written with.
    """
    return BloscCodec(typesize=typesize, cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle)


def _storage_options(url: str, storage_options: dict | None) -> dict | None:
    if url.startswith("file://"):  # fsspec's local filesystem creates no parent folders unless told to
        return {**(storage_options or {}), "auto_mkdir": True}
    return storage_options if "://" in url else None


def store_filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of a store URL (storage options apply to remote URLs only)."""
    return fsspec.core.url_to_fs(url, **(_storage_options(url, storage_options) or {}))


def create_array(group: zarr.Group, name: str, **kwargs: Any) -> zarr.Array:
    """An array of a block store (image, per-block or build bookkeeping), with the store's flat chunk keys."""
    return group.create_array(name, chunk_key_encoding=CHUNK_KEY_ENCODING, **kwargs)


def _image_layout(spec: ArraySpec, t: int, tile: int, inner_chunk: int | None) -> dict[str, Any]:
    """Chunking arguments of an image array: one block per chunk, or one block per shard of inner chunks (each
    compressed, then crc32c-checked on its own, so a partial read is verified too)."""
    codec = default_codec(np.dtype(spec.dtype).itemsize)
    if inner_chunk is None:
        return {"chunks": spec.chunks(t, tile), "compressors": codec}
    return {"shards": spec.chunks(t, tile), "chunks": (1, t, spec.channels, inner_chunk, inner_chunk),
            "compressors": (codec, Crc32cCodec())}


def create_store(url: str, n_blocks: int, attrs: dict[str, Any], *, t: int = T, tile: int = TILE,
                 inner_chunk: int | None = None, storage_options: dict | None = None) -> zarr.Group:
    """Create (or overwrite) an empty store with every array of the contract; ``complete`` is False.
    `inner_chunk`: the sharded layout with inner chunks of that many pixels square (a divisor of `tile`).

    The group and all its attributes are written first, in one write, so an interrupted creation still leaves a
    store that says what it is (and is recreated by the builder) rather than an anonymous folder.
    """
    if inner_chunk is not None and (inner_chunk < 1 or tile % inner_chunk):
        raise QwError(f"inner chunk {inner_chunk} must divide the tile size {tile}")
    image_codec = default_codec(np.dtype(ARRAYS["color"].dtype).itemsize)
    group = zarr.open_group(url, mode="w", storage_options=_storage_options(url, storage_options), attributes={
        "format": FORMAT, "block_shape": [t, tile, tile], "conventions": CONVENTIONS,
        "codec": image_codec.to_dict(), "qw_version": __version__, **attrs, "complete": False,
    })
    for spec in ARRAYS.values():
        layout = (_image_layout(spec, t, tile, inner_chunk) if spec.channels else
                  {"chunks": spec.chunks(t, tile), "compressors": default_codec(np.dtype(spec.dtype).itemsize)})
        create_array(group, spec.name, shape=spec.shape(n_blocks, t, tile), dtype=spec.dtype, fill_value=0,
                     **layout)
    return group


async def settled(read: Awaitable[Value]) -> Value:
    """Await a zarr read; when it fails, first await the chunk reads it started. zarr gathers one task per chunk and
    raises at the first failure, leaving the others running on its loop; one still pending at interpreter exit
    fails to reach the closed thread pool, and asyncio prints that traceback after the command's error line."""
    before = asyncio.all_tasks()
    try:
        return await read
    except Exception:
        await asyncio.gather(*(asyncio.all_tasks() - before), return_exceptions=True)
        raise


def read_array(array: zarr.Array, selection: Any = slice(None)) -> np.ndarray:
    """`array[selection]`, with no chunk read left running when it fails (see `settled`)."""
    return zarr_sync(settled(array.async_array.getitem(selection)))


def inner_chunk(array: zarr.Array) -> int | None:
    """The inner chunk size of a sharded image array (None: one chunk per block)."""
    return None if array.shards is None else int(array.chunks[-1])


# ----------------------------------------------------------------------------------------------- integrity


def checksum(values: np.ndarray) -> int:
    """crc32c of an array's raw bytes in C order (the stored dtype, little-endian as zarr stores it)."""
    data = np.ascontiguousarray(values)
    return int(google_crc32c.value(data.reshape(-1).view(np.uint8)))


@functools.lru_cache(maxsize=8)
def zeros_checksum(block_shape: tuple[int, ...]) -> int:
    """crc32c of an all-zero float16 image block: the recorded checksum of a block zarr stores no chunk for."""
    return checksum(np.zeros(block_shape, np.float16))


def block_checksums(group: zarr.Group) -> np.ndarray:
    """(N, 4) checksums of every stored block, read back: for writers that did not record them as they wrote
    (synthetic and benchmark stores). The builder records them while writing and never calls this."""
    arrays = [group[name] for name in IMAGE_ARRAYS]  # each opened once (an open reads its metadata)
    n = group["origin"].shape[0]
    return np.array([[checksum(a[i]) for a in arrays] for i in range(n)], np.uint32)


def open_array(group: zarr.Group, name: str, url: str | None = None) -> zarr.Array:
    """Array `name` of `group`: a KeyError when it is absent, a QwError naming its zarr.json when zarr cannot parse
    that (truncated or edited: zarr raises JSONDecodeError, ValueError, TypeError … from deep inside)."""
    try:
        return group[name]
    except KeyError:
        raise
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise QwError(f"{url or group.store_path}: array {name!r} has unreadable metadata ({name}/zarr.json: "
                      f"{type(exc).__name__}: {reason}); copy the store again or rebuild it with `qw datagen build`"
                      ) from None


def present_arrays(group: zarr.Group, url: str | None = None) -> dict[str, zarr.Array]:
    """The contract's arrays present in `group`, each opened once (in zarr 3 ``name in group`` is itself a
    metadata read, so it is not asked first)."""
    arrays = {}
    for name in ARRAYS:
        try:
            arrays[name] = open_array(group, name, url)
        except KeyError:
            pass
    return arrays


def descriptions(group: zarr.Group, arrays: dict[str, zarr.Array] | None = None) -> dict[str, int]:
    """crc32c of what gives the stored bytes their meaning besides the bytes themselves, as canonical JSON: each
    array's shape, dtype, chunks and fill value (one entry per array present), and the group attributes (but
    ``integrity`` and ``complete``). A dtype changed in an array's zarr.json would otherwise reinterpret intact
    chunks without any checksum failing. `arrays`: the group's arrays already opened (`present_arrays`)."""
    def crc(value: Any) -> int:
        return checksum(np.frombuffer(json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), np.uint8))

    # tolist: the scalar item() gave for a scalar fill value, and no ValueError for a list edited into zarr.json
    found = {name: crc({"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks),
                        "fill_value": np.asarray(a.fill_value).tolist()})
             for name, a in (present_arrays(group) if arrays is None else arrays).items()}
    return {**found, "attributes": crc({k: v for k, v in group.attrs.items() if k not in ("integrity", "complete")})}


def seal(group: zarr.Group, checksums: np.ndarray | None = None) -> None:
    """Record the block checksums, the small arrays' digests and the descriptions', then mark the store complete
    (last). Without `checksums` they are computed by reading every block back (`block_checksums`): for writers
    that did not record them as they wrote."""
    group[CHECKSUMS][:] = block_checksums(group) if checksums is None else checksums
    group.attrs["integrity"] = {"algorithm": "crc32c", "blocks": CONVENTIONS[CHECKSUMS],
                                "arrays": {name: checksum(group[name][:]) for name in SMALL_ARRAYS},
                                "descriptions": descriptions(group)}
    group.attrs["complete"] = True


# ----------------------------------------------------------------------------------------------- reading


Window = tuple[int, int, int]  # y, x, size: a square of a block's images


@dataclass
class BlockStore:
    """Read access to a `qw-blocks` store. Arrays are opened lazily, one handle per process."""

    url: str
    group: zarr.Group
    storage_options: dict | None = None
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)  # handles opened so far
    _small: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # small arrays read (and checked)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def version(self) -> int:
        return int(str(self.group.attrs["format"]).partition("/")[2])

    @functools.cached_property
    def verified(self) -> bool:
        """True when reads are checked against recorded checksums: in every version 2 store, and in any store that
        carries a checksum record (the ``integrity`` attribute or the ``checksum`` array), whatever its ``format``
        says. Only a store with neither (a real version 1 store) is read unverified; one edited attribute cannot
        switch the checks off."""
        if self.version >= 2 or "integrity" in self.group.attrs:
            return True
        try:
            self.array(CHECKSUMS)
        except QwError:
            return False
        return True

    @property
    def num_blocks(self) -> int:
        return int(self.array("origin").shape[0])  # the cached handle: no metadata read per call

    @property
    def complete(self) -> bool:
        return self.group.attrs.get("complete") is True  # not any truthy value: the string "false" is truthy

    def array(self, name: str) -> zarr.Array:
        """The named array, opened once (each open reads its metadata: a round trip on object storage)."""
        array = self.optional_array(name)
        if array is None:
            raise QwError(f"{self.url}: block store has no array {name!r} (has {sorted(self.group.array_keys())})")
        return array

    def optional_array(self, name: str) -> zarr.Array | None:
        """`array`, or None when the store has no such array (a damaged one is still an error)."""
        if name not in self._arrays:
            try:
                self._arrays[name] = open_array(self.group, name, self.url)
            except KeyError:
                return None
        return self._arrays[name]

    def small_array(self, name: str) -> np.ndarray:
        """A whole per-block array (origin, jitter, history_valid, checksum), read once and checked against the
        digest `seal` recorded: a missing or altered chunk of it is an error, not zeros."""
        if name not in self._small:
            try:
                values = read_array(self.array(name))
            except QwError:
                raise
            except Exception as exc:  # codec/fsspec errors of a truncated or corrupt chunk
                raise QwError(f"{self.url}: array {name!r} cannot be read ({type(exc).__name__}: {exc}); "
                              f"run `qw datagen verify {self.url}`") from None
            if self.verified and self.complete and \
                    integrity_record(self.url, self.group)["arrays"].get(name) != checksum(values):
                raise QwError(f"{self.url}: array {name!r} does not match its recorded checksum (a chunk is missing "
                              f"or altered); run `qw datagen verify {self.url}`")
            self._small[name] = values
        return self._small[name]

    def origins(self) -> np.ndarray:
        """(N, 5) scene index, shot index, first frame, y, x per block; every index is checked against its table,
        since an unverified (version 1) store has no checksum that would catch a damaged origin array."""
        origins = self.small_array("origin")
        for column, table in ((0, "scenes"), (1, "shots")):
            rows = len(self.attrs[table])
            outside = np.flatnonzero((origins[:, column] < 0) | (origins[:, column] >= rows))
            if len(outside):
                block = int(outside[0])
                raise QwError(f"{self.url}: block {block}'s origin names {table} row {int(origins[block, column])}, "
                              f"but the {table} table has {rows} rows; run `qw datagen verify {self.url}`")
        return origins

    def split_indices(self, split: str) -> np.ndarray:
        """Indices of the blocks whose shot belongs to `split` ('train', 'val', 'test')."""
        if split not in SPLITS:  # a misspelt split would otherwise select no blocks, silently
            raise QwError(f"{self.url}: unknown split {split!r}; splits are {', '.join(SPLITS)}")
        shot_split = np.array([s["split"] for s in self.attrs["shots"]])
        origins = self.origins()
        return np.flatnonzero(shot_split[origins[:, 1]] == split) if len(origins) else np.zeros(0, np.int64)

    def chunk_key(self, name: str, index: int) -> str:
        """Store key of the chunk holding block `index` of image array `name`, in the array's own key layout."""
        array = self.array(name)
        return f"{name}/{array.metadata.chunk_key_encoding.encode_chunk_key((index,) + (0,) * (array.ndim - 1))}"

    def chunk_exists(self, name: str, index: int) -> bool:
        fs, root = store_filesystem(self.url, self.storage_options)
        return fs.exists(f"{root.rstrip('/')}/{self.chunk_key(name, index)}")

    def stored_blocks(self, name: str) -> set[int]:
        """Blocks of image array `name` that have a chunk in the store: one listing of the array's folder, no reads.
        (Nested keys of older stores: one listing of the ``c`` folder plus one check per block; fsspec's find over
        their ~220k folders took ~10× longer.)"""
        fs, root = store_filesystem(self.url, self.storage_options)
        folder = f"{root.rstrip('/')}/{name}"
        if self.array(name).metadata.chunk_key_encoding.separator == ".":
            names = (k.rsplit("/", 1)[-1] for k in fs.ls(folder, detail=False))
            return {int(n.split(".")[1]) for n in names if n.startswith("c.")}
        if "://" not in self.url:
            nested = f"{folder}/c"
            indices = [int(e.name) for e in os.scandir(nested) if e.name.isdigit()] if os.path.isdir(nested) else []
            return {i for i in indices if os.path.isfile(os.path.join(root, self.chunk_key(name, i)))}
        prefix = f"{folder}/c/"
        keys = fs.find(prefix) if fs.exists(prefix) else []
        return {int(k[len(prefix):].split("/")[0]) for k in keys if k.startswith(prefix)}

    def missing_blocks(self, arrays: Iterable[str] = IMAGE_ARRAYS) -> dict[str, list[int]]:
        """Per image array (of `arrays`), the blocks whose chunk is absent though the block is not all zeros (zarr
        does not store a chunk equal to the fill value, so an all-zero block legitimately has none). Without
        recorded checksums (version 1) every absent chunk counts. One listing per array, no chunk reads."""
        missing = {}
        for name in arrays:
            k = IMAGE_ARRAYS.index(name)
            absent = sorted(set(range(self.num_blocks)) - self.stored_blocks(name))
            if absent and self.verified and self.complete:
                empty = zeros_checksum(self.array(name).shape[1:])
                absent = [i for i in absent if int(self.small_array(CHECKSUMS)[i, k]) != empty]
            if absent:
                missing[name] = absent
        return missing

    def image_block(self, name: str, index: int, verify: bool = True, window: Window | None = None) -> np.ndarray:
        """Block `index` of image array `name`, or its spatial `window` (y, x, size); with `verify` (and a store
        that records checksums) what is returned is checked. Errors name the block and the chunk.

        A whole block is checked against its recorded crc32c. A window of a sharded array is read alone (only
        the inner chunks it overlaps); zarr checks each inner chunk's crc32c and the shard index's as it decodes
        them, and an all-zero window of a block whose checksum is not that of zeros is checked for a missing
        shard (zarr reads one as zeros). A window of an unsharded array is cut from the verified whole block."""
        return self._image_blocks((name,), index, verify, window)[name]

    def _image_blocks(self, names: Iterable[str], index: int, verify: bool, window: Window | None
                      ) -> dict[str, np.ndarray]:
        """`image_block` of several arrays, fetched together: one trip through zarr's event loop for all of them
        rather than one each (a thread hand-off per trip: ~7 % of a whole-block read, benchmarks/bench_loader.py)."""
        names = tuple(names)
        if window is not None and names:
            self._check_window(window, names[0])
        selections = {name: self._selection(name, index, window) for name in names}
        arrays = [self.array(name).async_array for name in names]  # opened out here: opening is itself a sync call

        async def fetch_all() -> list[Any]:
            return await asyncio.gather(*(settled(array.getitem(selections[name]))
                                          for array, name in zip(arrays, names)), return_exceptions=True)
        out = {}
        for name, values in zip(names, zarr_sync(fetch_all())):
            if isinstance(values, Exception):  # codec/fsspec errors of a truncated or corrupt chunk, inner crc32c
                raise QwError(f"{self._where(name, index)} cannot be read ({type(values).__name__}: {values}); "
                              f"run `qw datagen verify {self.url}`") from None
            partial = len(selections[name]) > 1  # only the window was read
            if verify and self.verified:
                self._check_image(name, index, values, partial)
            if window is not None and not partial:
                y, x, size = window
                values = values[..., y:y + size, x:x + size]
            out[name] = values
        return out

    def _check_window(self, window: Window, name: str) -> None:
        """Refuse a window that is not a non-empty square inside the tiles: slicing would silently return a
        smaller or empty image."""
        side = self.array(name).shape[-1]
        y, x, size = window
        if not (size >= 1 and 0 <= y and 0 <= x and y + size <= side and x + size <= side):
            raise QwError(f"{self.url}: window (y={y}, x={x}, size={size}) is not a square inside the store's "
                          f"{side}x{side} tiles")

    def _selection(self, name: str, index: int, window: Window | None) -> tuple:
        """What to read of `name` for block `index`: the window alone when the array is sharded, else the block."""
        if window is None or inner_chunk(self.array(name)) is None:
            return (index,)
        y, x, size = window
        return (index, slice(None), slice(None), slice(y, y + size), slice(x, x + size))

    def _where(self, name: str, index: int) -> str:
        """How errors name a block's chunk of image array `name` (built only when one is raised)."""
        return f"{self.url}: block {index}: {name} chunk {self.chunk_key(name, index)}"

    def _check_image(self, name: str, index: int, values: np.ndarray, partial: bool) -> None:
        recorded = int(self.small_array(CHECKSUMS)[index, IMAGE_ARRAYS.index(name)])
        if partial:
            if not values.view(np.uint16).any() and recorded != zeros_checksum(self.array(name).shape[1:]) \
                    and not self.chunk_exists(name, index):
                raise QwError(f"{self._where(name, index)} is missing; run `qw datagen verify {self.url}`")
        elif checksum(values) != recorded:
            what = "is altered (checksum mismatch)" if self.chunk_exists(name, index) else "is missing"
            raise QwError(f"{self._where(name, index)} {what}; run `qw datagen verify {self.url}`")

    def read_block(self, index: int, arrays: Iterable[str] = ("color", "reference", "motion", "jitter",
                                                               "history_valid"),
                   verify: bool = True, window: Window | None = None) -> dict[str, np.ndarray]:
        """One block as numpy arrays in their stored dtypes (float16 images stay float16), each image checked
        unless `verify` is False (see `image_block`; `window` (y, x, size): only that square of the images). An
        index outside the store is an IndexError (a caller's mistake, not damage)."""
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"{self.url}: block index {index} is out of range (the store holds {self.num_blocks} "
                             f"blocks, 0..{self.num_blocks - 1})")
        arrays = tuple(arrays)
        images = self._image_blocks([name for name in arrays if name in IMAGE_ARRAYS], index, verify, window)
        return {name: images[name] if name in IMAGE_ARRAYS else self.small_array(name)[index] for name in arrays}


def integrity_record(url: str, group: zarr.Group) -> dict[str, Any]:
    """The ``integrity`` attribute `seal` wrote: a mapping with ``arrays`` and ``descriptions`` mappings. Missing
    or of another shape (null, a string) in a store marked complete, it is damage: one line, never a traceback."""
    record = group.attrs.get("integrity")
    if record is None and "integrity" not in group.attrs:
        raise QwError(f"{url}: block store is marked complete but records no checksums (integrity attribute "
                      f"missing); rebuild it with `qw datagen build`")
    if not (isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in ("arrays", "descriptions"))):
        raise QwError(f"{url}: the store's integrity attribute is not a checksum record (got "
                      f"{json.dumps(record)[:60]}); the store cannot be checked: rebuild it with `qw datagen build`")
    return record


def _check_reachable(url: str, storage_options: dict | None) -> None:
    """One clear line when a remote store cannot be reached (endpoint down, stalled past the timeouts of its
    storage options, credentials missing or refused) rather than a 'not a store' guess or a traceback."""
    if "://" not in url or url.startswith("file://"):
        return
    try:
        fs, path = store_filesystem(url, storage_options)
        fs.exists(f"{path.rstrip('/')}/zarr.json")
    except Exception as exc:  # botocore/aiohttp/gcsfs errors: no common base class
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise QwError(f"{url}: cannot reach the store ({reason}); check the endpoint, credentials and timeouts "
                      f"in --storage-options") from None


def open_store(url: str | os.PathLike, *, mode: str = "r", require_complete: bool = True,
               storage_options: dict | None = None) -> BlockStore:
    """Open a store (a local path or an fsspec URL) and check its format; by default refuse one that is not marked
    complete."""
    url = os.fspath(url)
    _check_reachable(url, storage_options)
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
    check_attrs(url, dict(group.attrs))
    store = BlockStore(url, group, storage_options)
    if require_complete and not store.complete:
        raise QwError(f"{url}: block store is incomplete (the build did not finish); rerun `qw datagen build`")
    if store.complete and store.verified:
        # only the arrays present are checked: a copy may leave out one its reader does not need (depth)
        recorded = integrity_record(url, group)["descriptions"]
        arrays = present_arrays(group, url)
        store._arrays.update(arrays)  # opened once: reads reuse these handles
        changed = [name for name, value in descriptions(group, arrays).items() if recorded.get(name) != value]
        if changed:
            raise QwError(f"{url}: the store's {' and '.join(changed)} metadata (zarr.json) changed after it was "
                          f"written (checksum mismatch); rebuild it with `qw datagen build`")
    if not store.verified:
        log.warning("%s: a %s store records no checksums: blocks are read unverified", url, fmt)
    return store
