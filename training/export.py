"""Integer export of a quantized QW-Net: the `.qwq` file (format `qw-qwq/2`).

Layout (little endian)::

    bytes 0-3    magic b"QWQ\\0"
    bytes 4-7    uint32 format version (2)
    bytes 8-15   uint64 header length N
    16 … 16+N    header: UTF-8 JSON (see below)
    then         zero padding to a multiple of 16, then the data section (every tensor 16-byte aligned)
    last 32      SHA-256 of every byte before it (version 2): the header's numbers are covered too, not only the
                 data section (version 1 files, without it, are still read)

The header holds the format, qw's version, the model and quantization config (enough to rebuild the network),
the HDR transform, one entry per quantized conv (`layers`: its module name, role, bit widths, activation range,
zero point, and references to its tensors) and the float tensors of everything else (`float_tensors`), plus the
size and SHA-256 of the data section. A tensor reference is ``{"dtype", "shape", "offset", "nbytes"}`` with dtype

* ``int4``: signed 4-bit values (two's complement nibbles), two per byte, the even element in the low nibble;
* ``int8``: signed bytes; ``float32`` / ``float16``: IEEE little endian.

Per quantized conv: integer weights (int4 when weight_bits ≤ 4, else int8; float16 for the FP16 plan), the
per-output-channel weight scale (float32), the folded bias (float32) and the activation scale (float32 scalar)
with its integer zero point. Output = (Σ w_q·(a_q − z)) · s_a·s_w + b, which is what `training.integer_ref` runs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datagen import __version__
from datagen.capture_format import atomic_path
from datagen.errors import QwError
from training.config import Config
from training.quant import FLOAT16_BITS, QuantConv, quantized_convs

MAGIC = b"QWQ\x00"
FORMAT_VERSION = 2  # 2 added the whole-file SHA-256 trailer
FORMAT = f"qw-qwq/{FORMAT_VERSION}"
_TRAILER = 32  # bytes of the SHA-256 that ends a version 2 file
ALIGN = 16
_PREFIX = struct.Struct("<4sIQ")
_NUMPY_DTYPES = {"int8": "<i1", "float32": "<f4", "float16": "<f2"}  # byte-aligned dtypes; int4 is packed


# ----------------------------------------------------------------------------------------------- packing


def pack_int4(values: np.ndarray) -> bytes:
    """Signed values in [−8, 7] → two per byte, element 2i in the low nibble of byte i (zero-padded when odd)."""
    flat = np.asarray(values).astype(np.int64).ravel()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{flat.min()}, {flat.max()}]")
    nibbles = (flat & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Inverse of `pack_int4`: `count` int8 values, sign-extended from 4 bits."""
    packed = np.frombuffer(data, dtype=np.uint8)
    nibbles = np.empty(packed.size * 2, np.uint8)
    nibbles[0::2], nibbles[1::2] = packed & 0xF, packed >> 4
    signed = nibbles[:count].astype(np.int8)
    return np.where(signed > 7, signed - 16, signed).astype(np.int8)


def _encode(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "int4":
        return pack_int4(array)
    return np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype]).tobytes()


def _decode(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == "int4":
        return unpack_int4(data, count).reshape(shape)
    return np.frombuffer(data, dtype=_NUMPY_DTYPES[dtype], count=count).reshape(shape).copy()


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class ExportedLayer:
    """One quantized conv as stored: integer (or float16) weights, scales, bias and its input quantizer."""

    name: str
    weight_bits: int
    act_bits: int
    act_lower: float
    padding: int
    weight: np.ndarray          # int8 codes (integer plans) or float16 weights (FP16 plan), (O, I, kh, kw)
    weight_scale: np.ndarray    # float32 (O,); ones for float16
    bias: np.ndarray            # float32 (O,)
    act_scale: np.ndarray       # float32 scalar; 0 for float16
    act_zero_point: int

    @property
    def integer(self) -> bool:
        return self.weight_bits < FLOAT16_BITS


@dataclass
class ExportedModel:
    config: dict[str, Any]
    layers: list[ExportedLayer]
    float_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _export_layer(name: str, conv: QuantConv) -> ExportedLayer:
    if conv.stride != (1, 1) or conv.padding[0] != conv.padding[1]:
        raise QwError(f"{name}: only stride-1 convs with square padding can be exported")
    if conv.integer:
        codes, w_scale = conv.quantized_weight()
        act_scale, zero = conv.input_quant.scale_and_zero()
        weight = codes.round().to(torch.int8).numpy()
        w_scale, act_scale, zero = w_scale.float().numpy(), act_scale.float().numpy(), int(zero)
    elif conv.weight_bits == FLOAT16_BITS:
        weight = conv.weight.half().numpy()
        w_scale, act_scale, zero = np.ones(conv.weight.shape[0], np.float32), np.float32(0), 0
    else:
        raise QwError(f"{name}: {conv.weight_bits}-bit weights are neither an integer plan nor FP16; nothing to export")
    return ExportedLayer(name, conv.weight_bits, conv.input_quant.bits, conv.input_quant.lower, conv.padding[0],
                         weight, w_scale, conv.bias.float().numpy(), np.asarray(act_scale, np.float32), zero)


def exported_model(qmodel: torch.nn.Module, cfg: Config) -> ExportedModel:
    """What the file stores, taken from a QAT model (a `quantize_model` result)."""
    convs = list(quantized_convs(qmodel))
    if not convs:
        raise QwError("the model has no quantized convs: export needs a `qw quantize` checkpoint")
    layers = [_export_layer(name, conv) for name, conv in convs]
    prefixes = tuple(f"{name}." for name, _ in convs)
    floats = {k: v.detach().float().cpu().numpy() for k, v in qmodel.state_dict().items() if not k.startswith(prefixes)}
    return ExportedModel(cfg.model_dump(mode="json"), layers, floats)


def _layer_header(layer: ExportedLayer, add) -> dict[str, Any]:
    weight_dtype = ("int4" if layer.weight_bits <= 4 else "int8") if layer.integer else "float16"
    return {"name": layer.name, "weight_bits": layer.weight_bits, "act_bits": layer.act_bits,
            "act_lower": layer.act_lower, "act_zero_point": layer.act_zero_point, "padding": layer.padding,
            "weight": add(layer.weight, weight_dtype), "weight_scale": add(layer.weight_scale, "float32"),
            "bias": add(layer.bias, "float32"), "act_scale": add(layer.act_scale, "float32")}


def write_qwq(path: str | Path, model: ExportedModel) -> dict[str, Any]:
    """Write a `.qwq` file atomically; returns its header."""
    chunks: list[bytes] = []
    offset = 0

    def add(array: np.ndarray, dtype: str) -> dict[str, Any]:
        nonlocal offset
        data = _encode(array, dtype)
        ref = {"dtype": dtype, "shape": list(np.shape(array)), "offset": offset, "nbytes": len(data)}
        padded = data + b"\0" * (-len(data) % ALIGN)
        chunks.append(padded)
        offset += len(padded)
        return ref

    layers = [_layer_header(layer, add) for layer in model.layers]
    floats = {name: add(array, "float32") for name, array in model.float_tensors.items()}
    blob = b"".join(chunks)
    header = {"format": FORMAT, "qw_version": __version__, "config": model.config, "layers": layers,
              "float_tensors": floats, "data_bytes": len(blob), "data_sha256": hashlib.sha256(blob).hexdigest()}
    text = json.dumps(header, indent=1).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text))
    body = prefix + text + b"\0" * (-(len(prefix) + len(text)) % ALIGN) + blob
    with atomic_path(path) as tmp:
        tmp.write_bytes(body + hashlib.sha256(body).digest())
    return header


def read_qwq(path: str | Path) -> ExportedModel:
    """Read and check a `.qwq` file (magic, version, data checksum); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise QwError(f"{path}: no such file")
    raw = path.read_bytes()
    if len(raw) < _PREFIX.size or raw[:4] != MAGIC:
        raise QwError(f"{path}: not a .qwq file (bad magic)")
    _, version, n = _PREFIX.unpack_from(raw)
    if version > FORMAT_VERSION:
        raise QwError(f"{path}: .qwq format version {version} is newer than this qw reads ({FORMAT_VERSION})")
    if version >= 2:
        raw, trailer = raw[:-_TRAILER], raw[-_TRAILER:]
        if hashlib.sha256(raw).digest() != trailer:
            raise QwError(f"{path}: truncated or corrupt (the SHA-256 of the file does not match its trailer)")
    try:
        header = json.loads(raw[_PREFIX.size:_PREFIX.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QwError(f"{path}: damaged header ({exc})") from None
    start = _PREFIX.size + n
    start += -start % ALIGN
    blob = raw[start:]
    if len(blob) != header["data_bytes"] or hashlib.sha256(blob).hexdigest() != header["data_sha256"]:
        raise QwError(f"{path}: data section is truncated or corrupt (size or SHA-256 mismatch)")

    def get(ref: dict[str, Any]) -> np.ndarray:
        return _decode(blob[ref["offset"]:ref["offset"] + ref["nbytes"]], ref["dtype"], ref["shape"])

    layers = [ExportedLayer(h["name"], h["weight_bits"], h["act_bits"], h["act_lower"], h["padding"], get(h["weight"]),
                            get(h["weight_scale"]), get(h["bias"]), get(h["act_scale"]), h["act_zero_point"])
              for h in header["layers"]]
    floats = {name: get(ref) for name, ref in header["float_tensors"].items()}
    return ExportedModel(header["config"], layers, floats, header)


def export_command(checkpoint: str, out: str, verify_shot: str | None = None, verify_frames: int = 4) -> dict[str, Any]:
    """`qw export`: a quantized checkpoint → a `.qwq` file; returns a summary (layers, bytes, bit widths).

    With `verify_shot`, the written file is loaded into the integer reference and compared with the
    fake-quantized model on that captured shot (the summary gets a ``verify`` entry).
    """
    from training.integer_ref import compare_on_shot, load_integer_model
    from training.quant import model_from_any_checkpoint

    qmodel, cfg, quantized = model_from_any_checkpoint(checkpoint)
    if not quantized:
        raise QwError(f"{checkpoint}: a full-precision checkpoint; run `qw quantize` first and export its result")
    header = write_qwq(out, exported_model(qmodel, cfg))
    bits = sorted({(layer["weight_bits"], layer["act_bits"]) for layer in header["layers"]})
    summary = {"path": str(out), "layers": len(header["layers"]), "bytes": Path(out).stat().st_size,
               "weight_bytes": sum(layer["weight"]["nbytes"] for layer in header["layers"]),
               "bit_widths": [f"W{w}A{a}" for w, a in bits]}
    if verify_shot is not None:
        summary["verify"] = compare_on_shot(qmodel, load_integer_model(out)[0], verify_shot, verify_frames)
    return summary
