"""QW-Net's recurrent step as an ONNX graph (opset 21), float or quantized (QDQ with 4- and 8-bit types).

One graph is one frame of the recurrence, warp included::

    output = graph(color, motion, previous)     all (N,C,H,W) float32, H and W multiples of 16

with ``previous`` the graph's own output for the frame before. On a shot's first frame (and after a cut) pass the
colour itself as ``previous`` with zero motion: the warp then returns it unchanged (to float rounding).

Float: the network traced by PyTorch's ONNX exporter, batch norm folded. Quantized (from a `qw.training.export.qwq`
export, i.e. the numbers `.qwq` stores): every quantized conv reads
``DequantizeLinear(QuantizeLinear(x, s, z))`` with the scale and zero point of the activation tensor it reads (one
scale initializer per tensor, shared by its readers; UINT4 or UINT8 codes with the trained zero point) and
``DequantizeLinear(w_q, s_w, axis=0)`` weights (INT4 or INT8, symmetric per output channel). Everything the plan
leaves in float stays float, as in `qw.training.export.integer_ref`.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from qw.training.export.integer_ref import rebuild_network
from qw.training.model.qwnet import QWNet, pad_to_multiple
from qw.training.export.qwq import ExportedActivation, ExportedLayer, ExportedModel

OPSET = 21
INPUTS = ("color", "motion", "previous")
OUTPUT = "output"
_STEP = "model."  # module prefix of the network inside `RecurrentStep`


class RecurrentStep(nn.Module):
    """(color, motion, previous output) → output: one frame of QW-Net's recurrence with the warp inside."""

    def __init__(self, model: QWNet):
        super().__init__()
        self.model = model

    def forward(self, color: torch.Tensor, motion: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.model.step(color, self.model.warp_history(previous, motion))


def _trace(step: RecurrentStep) -> onnx.ModelProto:
    """The step through PyTorch's TorchScript-based exporter, with dynamic batch, height and width."""
    size = step.model.cfg.size_multiple * 2
    example = (torch.zeros(1, 3, size, size), torch.zeros(1, 2, size, size), torch.zeros(1, 3, size, size))
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in (*INPUTS, OUTPUT)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(step.eval(), example, buffer, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamic_axes=axes)
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    return graph


def float_graph(model: QWNet) -> onnx.ModelProto:
    """The float network's step (any QWNet with float convs; batch norm is folded by the exporter)."""
    return _trace(RecurrentStep(model))


# ------------------------------------------------------------------------------------------------ quantized


class _DequantizedConv(nn.Conv2d):
    """Stand-in for an exported conv while tracing: dequantized weights, replaced by Q/DQ nodes afterwards."""

    def __init__(self, layer: ExportedLayer, _activation: ExportedActivation):
        out_ch, in_ch, k, _ = layer.weight.shape
        super().__init__(in_ch, out_ch, k, padding=layer.padding)
        with torch.no_grad():
            dequantized = layer.weight.astype(np.float32) * layer.weight_scale[:, None, None, None]
            self.weight.copy_(torch.from_numpy(dequantized))
            self.bias.copy_(torch.from_numpy(layer.bias))


def _int_type(bits: int, signed: bool) -> int:
    if bits <= 4:
        return TensorProto.INT4 if signed else TensorProto.UINT4
    return TensorProto.INT8 if signed else TensorProto.UINT8


def _weight_nodes(layer: ExportedLayer) -> tuple[list[TensorProto], onnx.NodeProto, str]:
    """Initializers and the DequantizeLinear node of a layer's weights; returns the dequantized value's name."""
    codes, scale, out = f"{layer.name}.weight_quantized", f"{layer.name}.weight_scale", f"{layer.name}.weight"
    inits = [helper.make_tensor(codes, _int_type(layer.weight_bits, signed=True), layer.weight.shape,
                                layer.weight.astype(np.int32).ravel().tolist()),
             helper.make_tensor(scale, TensorProto.FLOAT, layer.weight_scale.shape, layer.weight_scale.tolist())]
    node = helper.make_node("DequantizeLinear", [codes, scale], [out], axis=0, name=f"{layer.name}.dq_weight")
    return inits, node, out


def _activation_inits(activation: ExportedActivation) -> list[TensorProto]:
    """The tensor's scale and zero point: one pair per activation tensor, shared by every conv that reads it."""
    return [helper.make_tensor(f"{activation.name}.scale", TensorProto.FLOAT, [], [float(activation.scale)]),
            helper.make_tensor(f"{activation.name}.zero_point", _int_type(activation.bits, signed=False), [],
                               [activation.zero_point])]


def qdq_graph(exported: ExportedModel) -> onnx.ModelProto:
    """The quantized step: the network of `exported` (a `qw.training.export.qwq` export of an integer plan) with QDQ."""
    if not all(layer.integer for layer in exported.layers):
        raise ValueError("a QDQ graph needs an integer quantization plan (w4a4 or w8a8), not fp16")
    model = _trace(RecurrentStep(rebuild_network(exported, _DequantizedConv, "the export")))
    graph = model.graph
    layers = {f"{_STEP}{layer.name}.weight": layer for layer in exported.layers}
    replaced = set()
    nodes: list[onnx.NodeProto] = []
    quantized: dict[tuple[str, str], str] = {}  # (value, activation tensor) → its dequantized value
    inits = [init for tensor in exported.activations.values() for init in _activation_inits(tensor)]
    for node in graph.node:
        layer = layers.get(node.input[1]) if node.op_type == "Conv" else None
        if layer is None:
            nodes.append(node)
            continue
        activation = exported.activations[layer.input]
        key = (node.input[0], activation.name)
        if key not in quantized:
            q, dq = f"{node.input[0]}.{activation.name}.q", f"{node.input[0]}.{activation.name}.dq"
            params = [f"{activation.name}.scale", f"{activation.name}.zero_point"]
            nodes += [helper.make_node("QuantizeLinear", [node.input[0], *params], [q], name=q),
                      helper.make_node("DequantizeLinear", [q, *params], [dq], name=dq)]
            quantized[key] = dq
        weight_inits, weight_node, weight = _weight_nodes(layer)
        inits += weight_inits
        nodes.append(weight_node)
        node.input[0], node.input[1] = quantized[key], weight
        nodes.append(node)
        replaced.add(f"{_STEP}{layer.name}.weight")
    if len(replaced) != len(layers):
        raise ValueError(f"convs not found in the traced graph: {sorted(set(layers) - replaced)}")
    kept = [init for init in graph.initializer if init.name not in replaced]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + inits)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_graph(graph: onnx.ModelProto, frames: Iterator[tuple[torch.Tensor, torch.Tensor, bool]],
              multiple: int) -> Iterator[torch.Tensor]:
    """ONNX Runtime (CPU) running a step graph recurrently over (color, motion, history valid) frames, as
    `qw.training.infer.run_qwnet` runs a QWNet: sizes padded to `multiple` and cropped back; yields (1,3,H,W)."""
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    previous = None
    for frame in frames:
        color, motion, valid = frame[:3]  # a frame may carry its jitter too: the graph does not read it
        h, w = color.shape[-2:]
        color, motion = pad_to_multiple(color, multiple), pad_to_multiple(motion, multiple)
        if not valid or previous is None:  # no history: the frame itself, not moved
            previous, motion = color, torch.zeros_like(motion)
        feed = {"color": color.numpy(), "motion": motion.numpy(), "previous": previous.numpy()}
        previous = torch.from_numpy(session.run([OUTPUT], feed)[0])
        yield previous[..., :h, :w]
