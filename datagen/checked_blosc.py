"""zarr's Blosc codec, refusing a chunk whose Blosc header does not match its length before c-blosc decodes it.

c-blosc takes the compressed size from the chunk's own header and reads that many bytes, so a truncated chunk (an
interrupted copy or sync) is read past its end (numcodecs issue 228): `qw datagen verify` then crashed with a
segmentation fault now and then, instead of naming the chunk. With the header's size checked against the bytes
present, c-blosc's own bounds checks (which trust that size) keep every read inside the chunk.

Importing this module makes it zarr's implementation of the ``blosc`` codec in this process (zarr's documented way
to choose a codec implementation: the ``codecs`` entry of `zarr.config`). The stored bytes and the codec's metadata
are those of `zarr.codecs.BloscCodec`: only decoding checks more.
"""

from __future__ import annotations

import zarr
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer
from zarr.registry import fully_qualified_name, register_codec

HEADER_BYTES = 16  # Blosc 1 frame header: version, versionlz, flags, typesize, then nbytes, blocksize, cbytes (LE)
CBYTES_AT = slice(12, 16)


def blosc_frame_problem(frame: bytes | memoryview) -> str | None:
    """Why `frame` cannot be a whole Blosc 1 frame (None when its header's compressed size is its length)."""
    if len(frame) < HEADER_BYTES:
        return f"{len(frame)} bytes, shorter than a Blosc header"
    claimed = int.from_bytes(bytes(frame[CBYTES_AT]), "little")
    if claimed != len(frame):
        return f"Blosc chunk of {len(frame)} bytes whose header says {claimed} (truncated or altered)"
    return None


class CheckedBloscCodec(BloscCodec):
    """`BloscCodec` whose decode refuses a chunk that `blosc_frame_problem` rejects."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        problem = blosc_frame_problem(memoryview(chunk_bytes.as_numpy_array()))
        if problem:
            raise ValueError(problem)
        return super()._decode_sync(chunk_bytes, chunk_spec)


register_codec("blosc", CheckedBloscCodec)
zarr.config.set({"codecs.blosc": fully_qualified_name(CheckedBloscCodec)})
