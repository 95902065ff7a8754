"""Integer reference implementation of a quantized QW-Net, loaded from a `.qwq` file.

Every quantized conv runs as an integer kernel would: the input activation is turned into int32 codes
(a_q − z), multiplied with the int32 weight codes and accumulated in int32 (im2col + integer matmul), and only
then rescaled to float by s_a·s_w with the float bias added. Everything the quantization plan leaves in float
(ELU, pooling, upsampling, concatenation, softmax, the kernel-prediction filters, the warp) is QW-Net's own code:
the network is `qw.training.model.qwnet.QWNet` with its quantized convs swapped for `IntegerConv`.

Its output equals the fake-quantized model's (`qw.training.quantization.fake_quant`) to float rounding — in practice bit for bit,
because both round activations with the same function and both accumulate exactly — which is the proof that the
simulated network can be run in integers. FP16-plan layers (no integers) run as float16-rounded float convs.
Every conv that reads a tensor quantizes it with that tensor's one scale and zero point (the `.qwq` activation
table), so the codes are the same whichever conv computes them: an integer pipeline writes each tensor once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qw.datagen.errors import QwError
from qw.training.config import Config
from qw.training.export.qwq import ExportedActivation, ExportedLayer, ExportedModel, read_qwq
from qw.training.model.qwnet import QWNet
from qw.training.quantization.fake_quant import (activation_codes, batch_norm_of, replace_module, rescale,
    worst_case_accumulator)

INT32_MAX = 2 ** 31 - 1


def int_conv2d(codes: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Stride-1 conv of int32 activations (B,C,H,W) with int32 weights (O,C,k,k): int32 accumulation, (B,O,H,W)."""
    if codes.dtype != torch.int32 or weight.dtype != torch.int32:
        raise TypeError("int_conv2d takes int32 codes and weights")
    b, c, h, w = codes.shape
    o, _, kh, kw = weight.shape
    padded = F.pad(codes, (padding,) * 4)  # zero code = zero activation: the float model's zero padding
    oh, ow = padded.shape[-2] - kh + 1, padded.shape[-1] - kw + 1
    # im2col in the weight's (C, kh, kw) order, then one integer matmul.
    columns = torch.stack([padded[:, :, dy:dy + oh, dx:dx + ow] for dy in range(kh) for dx in range(kw)], dim=2)
    acc = torch.matmul(weight.reshape(o, c * kh * kw), columns.reshape(b, c * kh * kw, oh * ow))
    return acc.reshape(b, o, oh, ow)


class IntegerConv(nn.Module):
    """A quantized conv executed with integer arithmetic from exported codes and scales."""

    def __init__(self, layer: ExportedLayer, activation: ExportedActivation):
        super().__init__()
        fan_in = int(np.prod(layer.weight.shape[1:]))
        if worst_case_accumulator(activation.bits, layer.weight_bits, fan_in) > INT32_MAX:
            raise QwError(f"{layer.name}: W{layer.weight_bits}A{activation.bits} with fan-in {fan_in} "
                          "can overflow int32")
        self.name, self.padding, self.qmax = layer.name, layer.padding, 2 ** activation.bits - 1
        self.register_buffer("weight", torch.from_numpy(layer.weight.astype(np.int32)))
        self.register_buffer("weight_scale", torch.from_numpy(layer.weight_scale))
        self.register_buffer("bias", torch.from_numpy(layer.bias))
        self.register_buffer("act_scale", torch.from_numpy(np.asarray(activation.scale, np.float32)))
        self.register_buffer("act_zero", torch.tensor(float(activation.zero_point)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = activation_codes(x.float(), self.act_scale, self.act_zero, self.qmax).to(torch.int32)
        return rescale(int_conv2d(codes, self.weight, self.padding), self.act_scale, self.weight_scale, self.bias)


class Float16Conv(nn.Module):
    """An FP16-plan conv: float16-rounded input and weights, float32 arithmetic."""

    def __init__(self, layer: ExportedLayer):
        super().__init__()
        self.padding = layer.padding
        self.register_buffer("weight", torch.from_numpy(layer.weight.astype(np.float32)))
        self.register_buffer("bias", torch.from_numpy(layer.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.half().float(), self.weight, self.bias, padding=self.padding)


def rebuild_network(exported: ExportedModel, conv_for: Callable[[ExportedLayer, ExportedActivation], nn.Module],
                    source: str | Path) -> QWNet:
    """QWNet with every exported conv replaced by ``conv_for(layer, its input activation)``, BN removed (folded
    into the exported bias) and the float tensors loaded; `source` names the file in errors."""
    model = QWNet(Config.model_validate(exported.config).model)
    replaced = []
    for layer in exported.layers:
        # The file's numbers passed `check_values`; its layer names and shapes must also fit the network its config
        # describes, else a foreign or edited file would fail mid-inference (or run convs of the wrong widths).
        try:
            conv = model.get_submodule(layer.name)
        except AttributeError:
            conv = None
        if not isinstance(conv, nn.Conv2d) or f"{layer.name}." in replaced:
            raise QwError(f"{source}: tensor {layer.name}: not a conv of the network its config describes "
                          "(or named twice)")
        if tuple(conv.weight.shape) != layer.weight.shape or conv.padding != (layer.padding, layer.padding):
            raise QwError(f"{source}: tensor {layer.name}: weights {list(layer.weight.shape)} with padding "
                          f"{layer.padding} do not fit the network's conv {list(conv.weight.shape)} with padding "
                          f"{conv.padding[0]}")
        bn = batch_norm_of(model, layer.name)
        replace_module(model, layer.name, conv_for(layer, exported.activations[layer.input]))
        if bn:
            replace_module(model, bn[0], nn.Identity())
        replaced.append(f"{layer.name}.")
    floats = {k: torch.from_numpy(v) for k, v in exported.float_tensors.items()}
    missing, unexpected = model.load_state_dict(floats, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(replaced))]
    if missing or unexpected:
        raise QwError(f"{source}: float tensors do not match the network (missing {missing}, unexpected {unexpected})")
    return model.eval()


def integer_conv(layer: ExportedLayer, activation: ExportedActivation) -> nn.Module:
    return IntegerConv(layer, activation) if layer.integer else Float16Conv(layer)


def load_integer_model(path: str | Path) -> tuple[QWNet, Config]:
    """QWNet rebuilt from a `.qwq` file with every quantized conv an `IntegerConv` (or `Float16Conv`)."""
    exported = read_qwq(path)
    return rebuild_network(exported, integer_conv, path), Config.model_validate(exported.config)
