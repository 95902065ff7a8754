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

Reading checks every value against what an exporter writes (`check_values`): 4- and 8-bit integer or float16 widths,
int4 storage for 4-bit and int8 for 8-bit weights, zero points inside the bit range, finite positive scales, finite
bounds, biases and float tensors, tensor references inside the data section. A file that fails is refused with its
path and the tensor's name, even when its checksums are consistent (a bug in another writer, or an edited file).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qw.datagen import __version__
from qw.datagen.capture_format import atomic_path
from qw.datagen.errors import QwError
from qw.training.config import INTEGER_BITS, Config, validated_config
from qw.training.quantization.fake_quant import (FLOAT16_BITS, ActQuant, QuantConv, is_integer, quantized_convs,
    weight_qmax)

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


def is_qwq_file(path: str | Path) -> bool:
    """Whether `path` starts with the `.qwq` magic (whatever its version or state)."""
    with open(path, "rb") as file:
        return file.read(len(MAGIC)) == MAGIC


def read_qwq(path: str | Path) -> ExportedModel:
    """Read and check a `.qwq` file (magic, version, data checksum); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise QwError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:4] != MAGIC and zipfile.is_zipfile(io.BytesIO(raw)):  # torch.save writes a zip archive
        raise QwError(f"{path}: not a .qwq file but a PyTorch checkpoint (bad magic); pass it to `qw eval` as a "
                      "CHECKPOINT argument, or export it with `qw export`")
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
    # the trailer already covers the data section; its declared size and SHA-256 are checked too, so a file that
    # another reader of the format (which may check only those) would refuse is not accepted here
    try:
        if len(blob) != header["data_bytes"] or hashlib.sha256(blob).hexdigest() != header["data_sha256"]:
            raise QwError(f"{path}: data section is truncated or corrupt (size or SHA-256 mismatch)")
        model = _parse(header, _TensorReader(path, blob))
    except (KeyError, TypeError, ValueError) as exc:  # a header that lacks a field or holds the wrong kind of value
        raise QwError(f"{path}: damaged header ({type(exc).__name__}: {exc})") from None
    check_values(model, path)
    return model


class _TensorReader:
    """Decodes tensor references of one file's data section, refusing references that do not fit it."""

    def __init__(self, path: Path, blob: bytes):
        self.path, self.blob = path, blob

    def __call__(self, ref: dict[str, Any], name: str) -> np.ndarray:
        dtype, shape, offset, nbytes = ref["dtype"], ref["shape"], ref["offset"], ref["nbytes"]
        if dtype not in (*_NUMPY_DTYPES, "int4"):
            raise QwError(f"{self.path}: tensor {name}: unknown dtype {dtype!r}")
        if not all(isinstance(v, int) and v >= 0 for v in (*shape, offset, nbytes)):
            raise QwError(f"{self.path}: tensor {name}: shape, offset and size must be non-negative integers")
        count = int(np.prod(shape, dtype=np.int64))
        expected = (count + 1) // 2 if dtype == "int4" else count * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if nbytes != expected:
            raise QwError(f"{self.path}: tensor {name}: {nbytes} bytes for {dtype} {shape} (expected {expected})")
        if offset + nbytes > len(self.blob):
            raise QwError(f"{self.path}: tensor {name}: bytes {offset}..{offset + nbytes} lie past the end of the "
                          f"data section ({len(self.blob)} bytes)")
        return _decode(self.blob[offset:offset + nbytes], dtype, shape)


def _parse(header: dict[str, Any], get: _TensorReader) -> ExportedModel:
    activations = {h["name"]: ExportedActivation(h["name"], h["bits"], h["lower"], get(h["scale"], h["name"]),
                                                 h["zero_point"]) for h in header["activations"]}
    layers = [ExportedLayer(h["name"], h["weight_bits"], h["input"], h["padding"], get(h["weight"], h["name"]),
                            get(h["weight_scale"], f"{h['name']}.weight_scale"), get(h["bias"], f"{h['name']}.bias"))
              for h in header["layers"]]
    floats = {name: get(ref, name) for name, ref in header["float_tensors"].items()}
    return ExportedModel(header["config"], activations, layers, floats, header)


# ----------------------------------------------------------------------------------------------- value checks

_WEIGHT_DTYPES = {4: "int4", 8: "int8", FLOAT16_BITS: "float16"}  # what `_layer_header` stores per weight width


def _problem_of_activation(activation: ExportedActivation) -> str | None:
    if activation.bits not in (*INTEGER_BITS, FLOAT16_BITS):
        return f"{activation.bits}-bit activations (the format has {', '.join(map(str, INTEGER_BITS))} and " \
               f"{FLOAT16_BITS})"
    if not math.isfinite(activation.lower) or activation.lower > 0:
        return f"lower bound {activation.lower} (must be finite and <= 0)"
    if not activation.integer:
        return None
    if activation.scale.size != 1 or not (math.isfinite(float(activation.scale)) and float(activation.scale) > 0):
        return f"scale {activation.scale.ravel().tolist()} (must be one finite value > 0)"
    if not isinstance(activation.zero_point, int) or not 0 <= activation.zero_point <= 2 ** activation.bits - 1:
        return f"zero point {activation.zero_point!r} outside 0..{2 ** activation.bits - 1} of {activation.bits} bits"
    return None


def _problem_of_layer(layer: ExportedLayer, header: dict[str, Any],
                      activations: dict[str, ExportedActivation]) -> str | None:
    if layer.weight_bits not in _WEIGHT_DTYPES:
        return f"{layer.weight_bits}-bit weights (the format has {', '.join(map(str, _WEIGHT_DTYPES))})"
    if header["weight"]["dtype"] != _WEIGHT_DTYPES[layer.weight_bits]:
        return f"{layer.weight_bits}-bit weights stored as {header['weight']['dtype']}"
    activation = activations.get(layer.input)
    if activation is None:
        return f"reads activation {layer.input!r}, which the file does not define"
    if layer.integer != activation.integer:
        return f"{layer.weight_bits}-bit weights read a {activation.bits}-bit input (integer weights need an integer " \
               "input, float16 weights a float16 one)"
    if not isinstance(layer.padding, int) or isinstance(layer.padding, bool) or layer.padding < 0:
        return f"padding {layer.padding!r} (must be an integer >= 0)"
    out_channels = layer.weight.shape[0] if layer.weight.ndim == 4 else -1
    if layer.weight_scale.shape != (out_channels,) or layer.bias.shape != (out_channels,):
        return f"weights {list(layer.weight.shape)}, scales {list(layer.weight_scale.shape)} and bias " \
               f"{list(layer.bias.shape)} do not fit one conv"
    if layer.integer:
        qmax = weight_qmax(layer.weight_bits)
        if layer.weight.size and np.abs(layer.weight.astype(np.int16)).max() > qmax:
            return f"weight codes outside -{qmax}..{qmax} of {layer.weight_bits} bits"
        if not (np.isfinite(layer.weight_scale).all() and (layer.weight_scale > 0).all()):
            return "weight scales must be finite and > 0"
    elif not np.isfinite(layer.weight).all():
        return "non-finite weights"
    if not np.isfinite(layer.bias).all():
        return "non-finite bias"
    return None


def check_values(model: ExportedModel, path: str | Path) -> None:
    """Refuse values no exporter writes: unsupported bit widths, zero points outside the bit range, scales that are
    not finite and positive, non-finite bounds, biases or float tensors; the error names the file and tensor."""
    validated_config(model.config, str(path))
    problems = [(name, _problem_of_activation(a)) for name, a in model.activations.items()]
    problems += [(layer.name, _problem_of_layer(layer, header, model.activations))
                 for layer, header in zip(model.layers, model.header["layers"])]
    problems += [(name, "non-finite values") for name, array in model.float_tensors.items()
                 if not np.isfinite(array).all()]
    for name, problem in problems:
        if problem:
            raise QwError(f"{path}: tensor {name}: {problem}")

