"""The `.qwq` file (format `qw-qwq/2`): a quantized QW-Net's integer weights, scales and float parts.

Layout (little endian)::

    bytes 0-3    magic b"QWQ\\0"
    bytes 4-7    uint32 format version (2)
    bytes 8-15   uint64 header length N
    16 … 16+N    header: UTF-8 JSON (see below)
    then         zero padding to a multiple of 16, then the data section (every tensor 16-byte aligned)
    last 32      SHA-256 of every byte before it: the header's numbers are covered too, not only the data section

The header holds the format, qw's version, the model and quantization config (enough to rebuild the network),
one entry per quantized activation tensor (`activations`: name, bits, range, scale, zero point: one scale per
tensor, however many convs read it), one entry per quantized conv (`layers`: its module name, weight bits, the
activation tensor it reads, and references to its tensors) and the float tensors of everything else
(`float_tensors`), plus the size and SHA-256 of the data section. A tensor reference is
``{"dtype", "shape", "offset", "nbytes"}`` with dtype

* ``int4``: signed 4-bit values (two's complement nibbles), two per byte, the even element in the low nibble;
* ``int8``: signed bytes; ``float32`` / ``float16``: IEEE little endian.

Per quantized conv: integer weights (int4 when weight_bits ≤ 4, else int8; float16 for the FP16 plan), the
per-output-channel weight scale (float32) and the folded bias (float32); its input's scale s_a and zero point z are
the activation entry's. Output = (Σ w_q·(a_q − z)) · s_a·s_w + b, which is what `qw.training.export.integer_ref` runs.
Version 1 (one activation scale per conv) is no longer read: export the checkpoint again.
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

from qw.datagen import __version__
from qw.datagen.capture_format import atomic_path
from qw.datagen.errors import QwError
from qw.training.config import Config
from qw.training.quantization.fake_quant import FLOAT16_BITS, ActQuant, QuantConv, is_integer, quantized_convs

MAGIC = b"QWQ\x00"
FORMAT_VERSION = 2
FORMAT = f"qw-qwq/{FORMAT_VERSION}"
ALIGN = 16
_PREFIX = struct.Struct("<4sIQ")
_TRAILER = 32  # bytes of the SHA-256 that ends the file
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
class ExportedActivation:
    """One quantized activation tensor: codes q = clamp(round(x/scale) + zero_point, 0, 2^bits − 1)."""

    name: str
    bits: int
    lower: float               # 0 (unsigned) or −1 (ELU)
    scale: np.ndarray          # float32 scalar; 0 for float16
    zero_point: int

    @property
    def integer(self) -> bool:
        return is_integer(self.bits)


@dataclass
class ExportedLayer:
    """One quantized conv as stored: integer (or float16) weights, scales, bias, and the tensor it reads."""

    name: str
    weight_bits: int
    input: str                  # name of its input's `ExportedActivation`
    padding: int
    weight: np.ndarray          # int8 codes (integer plans) or float16 weights (FP16 plan), (O, I, kh, kw)
    weight_scale: np.ndarray    # float32 (O,); ones for float16
    bias: np.ndarray            # float32 (O,)

    @property
    def integer(self) -> bool:
        return self.weight_bits < FLOAT16_BITS


@dataclass
class ExportedModel:
    config: dict[str, Any]
    activations: dict[str, ExportedActivation]
    layers: list[ExportedLayer]
    float_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _export_activation(name: str, quantizer: ActQuant) -> ExportedActivation:
    if not is_integer(quantizer.bits):
        return ExportedActivation(name, quantizer.bits, quantizer.lower, np.float32(0), 0)
    scale, zero = quantizer.scale_and_zero()
    return ExportedActivation(name, quantizer.bits, quantizer.lower, np.asarray(scale.float().numpy(), np.float32),
                              int(zero))


@torch.no_grad()
def _export_layer(name: str, conv: QuantConv, tensor: str) -> ExportedLayer:
    if conv.stride != (1, 1) or conv.padding[0] != conv.padding[1]:
        raise QwError(f"{name}: only stride-1 convs with square padding can be exported")
    if conv.integer:
        codes, w_scale = conv.quantized_weight()
        weight, w_scale = codes.round().to(torch.int8).numpy(), w_scale.float().numpy()
    elif conv.weight_bits == FLOAT16_BITS:
        weight, w_scale = conv.weight.half().numpy(), np.ones(conv.weight.shape[0], np.float32)
    else:
        raise QwError(f"{name}: {conv.weight_bits}-bit weights are neither an integer plan nor FP16; nothing to export")
    return ExportedLayer(name, conv.weight_bits, tensor, conv.padding[0], weight, w_scale, conv.bias.float().numpy())


def exported_model(qmodel: torch.nn.Module, cfg: Config) -> ExportedModel:
    """What the file stores, taken from a QAT model (a `quantize_model` result)."""
    convs = list(quantized_convs(qmodel))
    if not convs:
        raise QwError("the model has no quantized convs: export needs a `qw quantize` checkpoint")
    tensor_of = {id(quantizer): name for name, quantizer in qmodel.act_quant.items()}
    activations = {name: _export_activation(name, quantizer) for name, quantizer in qmodel.act_quant.items()}
    layers = [_export_layer(name, conv, tensor_of[id(conv.input_quant)]) for name, conv in convs]
    prefixes = tuple(f"{name}." for name, _ in convs) + ("act_quant.",)
    floats = {k: v.detach().float().cpu().numpy() for k, v in qmodel.state_dict().items() if not k.startswith(prefixes)}
    return ExportedModel(cfg.model_dump(mode="json"), activations, layers, floats)


def _activation_header(activation: ExportedActivation, add) -> dict[str, Any]:
    return {"name": activation.name, "bits": activation.bits, "lower": activation.lower,
            "zero_point": activation.zero_point, "scale": add(activation.scale, "float32")}


def _layer_header(layer: ExportedLayer, add) -> dict[str, Any]:
    weight_dtype = ("int4" if layer.weight_bits <= 4 else "int8") if layer.integer else "float16"
    return {"name": layer.name, "weight_bits": layer.weight_bits, "input": layer.input, "padding": layer.padding,
            "weight": add(layer.weight, weight_dtype), "weight_scale": add(layer.weight_scale, "float32"),
            "bias": add(layer.bias, "float32")}


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

    activations = [_activation_header(activation, add) for activation in model.activations.values()]
    layers = [_layer_header(layer, add) for layer in model.layers]
    floats = {name: add(array, "float32") for name, array in model.float_tensors.items()}
    blob = b"".join(chunks)
    header = {"format": FORMAT, "qw_version": __version__, "config": model.config,
              "activations": activations, "layers": layers,
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
    if version != FORMAT_VERSION:
        raise QwError(f"{path}: .qwq format version {version}; this qw reads version {FORMAT_VERSION} "
                      "(export the checkpoint again)")
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
    # the trailer already covers the data section, so its size is the one check left (data_sha256 is written for
    # other readers of the format, not checked again here)
    if len(blob) != header["data_bytes"]:
        raise QwError(f"{path}: data section is truncated or corrupt (size or SHA-256 mismatch)")

    def get(ref: dict[str, Any]) -> np.ndarray:
        return _decode(blob[ref["offset"]:ref["offset"] + ref["nbytes"]], ref["dtype"], ref["shape"])

    activations = {h["name"]: ExportedActivation(h["name"], h["bits"], h["lower"], get(h["scale"]), h["zero_point"])
                   for h in header["activations"]}
    layers = [ExportedLayer(h["name"], h["weight_bits"], h["input"], h["padding"], get(h["weight"]),
                            get(h["weight_scale"]), get(h["bias"])) for h in header["layers"]]
    floats = {name: get(ref) for name, ref in header["float_tensors"].items()}
    return ExportedModel(header["config"], activations, layers, floats, header)
