"""Quantization-aware QW-Net: fake quantizers with straight-through gradients, BN folding, and the QAT model.

The plan (the paper's; bit widths from `qw.training.config.QuantConfig`):

* every U_e conv: weights `extractor_weight_bits` (4), input activations `extractor_act_bits` (4);
* U_e's first conv: weights `first_weight_bits` (8), input `first_input_bits` (8);
* U_f's 1×1 kernel-prediction convs: weights `predictor_weight_bits` (8); their input is a U_e activation and is
  quantized like one (`extractor_act_bits`), so they too are one integer GEMM; softmax and filtering stay float.

Weights are symmetric per output channel with range max|w| (levels −(2^(b−1)−1) … 2^(b−1)−1). Activations are
quantized per tensor, with one quantizer per tensor shared by every conv that reads it (`quant_sites` names the
tensors; the two halves of a decoder concatenation share one, so the concatenation has one scale too), and a
learned, log-parameterized upper clip: unsigned [0, clip] for the network input and ReLU activations, and for ELU
activations, which reach −1, asymmetric [−1, clip] with an integer zero point (so 0 — the conv's zero padding — is
exactly representable). Bits 16 mean "round to float16" (the FP16 variant); bits ≥ 32 mean no quantization.

Batch norm is folded into the conv (running statistics, frozen) before weights are quantized, so what is simulated
is what an integer kernel runs. A quantized conv computes conv(integer codes, integer weights) — exact in float32
(or float64 where the worst-case sum exceeds 2^24) — and then rescales by s_a·s_w and adds the bias:
`qw.training.export.integer_ref` does the same accumulation in int32 and must, and does, give the same numbers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from qw.training.config import QuantConfig
from qw.training.model.qwnet import ConvBNAct, QWNet, sequence_inputs

FLOAT16_BITS = 16
FLOAT_BITS = 32
EXACT_FLOAT32 = 2 ** 24  # integers up to this are exact in float32
ELU_MINIMUM = -1.0       # nn.ELU() with alpha 1

# Named bit-width plans for `qw quantize --bits`: the paper's, 8-bit everywhere, and half precision.
QUANT_PRESETS: dict[str, QuantConfig] = {
    "w4a4": QuantConfig(),
    "w8a8": QuantConfig(extractor_weight_bits=8, extractor_act_bits=8, first_weight_bits=8, first_input_bits=8,
                        predictor_weight_bits=8),
    "fp16": QuantConfig(extractor_weight_bits=16, extractor_act_bits=16, first_weight_bits=16, first_input_bits=16,
                        predictor_weight_bits=16),
}


def is_integer(bits: int) -> bool:
    return bits < FLOAT16_BITS


# ----------------------------------------------------------------------------------------------- primitives


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest; the gradient passes straight through (identity)."""
    return x + (torch.round(x) - x).detach()


def float16_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest float16 value; identity gradient."""
    return x + (x.half().to(x.dtype) - x).detach()


def weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def weight_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization: (integer-valued codes like `weight`, scale (C_out,)).

    scale = max|w| / (2^(b−1) − 1), so the largest weight of each channel maps to the top level exactly.
    """
    qmax = weight_qmax(bits)
    scale = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(1e-12) / qmax
    codes = round_ste(weight / scale.view(-1, *[1] * (weight.dim() - 1))).clamp(-qmax, qmax)
    return codes, scale


def activation_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer-valued codes q − z of x, q = clamp(round(x/s) + z, 0, qmax); STE inside the range, 0 outside.

    The fake-quant model and the integer reference both call this, so they round identically; rounding x/s before
    adding z (ties to even) is ONNX QuantizeLinear's order, so an exported QDQ graph rounds the same way too.
    """
    return torch.clamp(round_ste(x / scale) + zero_point, 0, qmax) - zero_point


def rescale(acc: torch.Tensor, act_scale: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """float32 conv output from an integer accumulator (B,C,H,W): acc · (s_a·s_w[c]) + b[c]."""
    return acc.float() * (act_scale * weight_scale).view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


class ActQuant(nn.Module):
    """Per-tensor activation quantizer: range [lower, clip] with clip = exp(log_clip) learned.

    `lower` is 0 (unsigned: network input, ReLU) or −1 (ELU). The scale is (clip − lower)/(2^b − 1) and the zero
    point z = round(−lower/scale), so codes q − z lie in [−z, 2^b − 1 − z] and 0 maps to 0.
    """

    def __init__(self, bits: int, lower: float, clip: float = 1.0):
        super().__init__()
        self.bits = bits
        self.lower = lower
        self.log_clip = nn.Parameter(torch.tensor(math.log(clip), dtype=torch.float32))

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def scale_and_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = (torch.exp(self.log_clip) - self.lower) / self.qmax
        return scale, torch.round(-self.lower / scale).detach()

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer-valued codes q − z, scale)."""
        scale, zero = self.scale_and_zero()
        return activation_codes(x, scale, zero, self.qmax), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_integer(self.bits):
            return float16_ste(x) if self.bits == FLOAT16_BITS else x
        codes, scale = self.codes(x)
        return codes * scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, range=[{self.lower:g}, {math.exp(self.log_clip.item()):.4g}]"


def worst_case_accumulator(act_bits: int, weight_bits: int, fan_in: int) -> int:
    """Largest |sum of code products| a conv can reach: bounds the int32 accumulator and float exactness."""
    return (2 ** act_bits - 1) * weight_qmax(weight_bits) * fan_in


class QuantConv(nn.Module):
    """A conv (bias included, BN already folded) with quantized weights and a quantizer on its input.

    The input quantizer belongs to the tensor, not to the conv: `quantize_model` keeps one per tensor in the model's
    ``act_quant`` table and every conv that reads the tensor refers to it (it is not a submodule here, so its clip
    is one parameter under one name).
    """

    def __init__(self, conv: nn.Conv2d, weight_bits: int, input_quant: ActQuant):
        super().__init__()
        object.__setattr__(self, "input_quant", input_quant)  # a reference, not a registered submodule
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError("QuantConv supports plain zero-padded convs only")
        self.weight = nn.Parameter(conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias)
        self.stride, self.padding = conv.stride, conv.padding
        self.weight_bits = weight_bits

    @property
    def integer(self) -> bool:
        return is_integer(self.weight_bits) and is_integer(self.input_quant.bits)

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return weight_codes(self.weight, self.weight_bits)

    def _exact_dtype(self) -> torch.dtype:
        bound = worst_case_accumulator(self.input_quant.bits, self.weight_bits, self.fan_in)
        return torch.float32 if bound < EXACT_FLOAT32 else torch.float64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            weight = self.weight if self.weight_bits >= FLOAT_BITS else float16_ste(self.weight)
            return F.conv2d(self.input_quant(x), weight, self.bias, self.stride, self.padding)
        codes, act_scale = self.input_quant.codes(x.float())
        w_codes, w_scale = self.quantized_weight()
        dtype = self._exact_dtype()
        # Integer-valued operands: the sum is exact, whatever order the backend accumulates in (no autocast).
        with torch.autocast(x.device.type, enabled=False):
            acc = F.conv2d(codes.to(dtype), w_codes.to(dtype), None, self.stride, self.padding)
        return rescale(acc, act_scale, w_scale, self.bias)


# ----------------------------------------------------------------------------------------------- BN folding


def fold_batch_norm(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A conv with bias equal to conv followed by `bn` in eval mode (running statistics); Identity: a copy."""
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       bias=True).to(conv.weight.device)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(conv.weight[:, 0, 0, 0])
    weight = conv.weight.detach()
    if isinstance(bn, nn.BatchNorm2d):
        factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        weight = weight * factor.view(-1, 1, 1, 1)
        bias = (bias - bn.running_mean) * factor + bn.bias.detach()
    elif not isinstance(bn, nn.Identity):
        raise TypeError(f"cannot fold {type(bn).__name__} into a conv")
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


# ----------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class QuantSite:
    """One conv of the plan: where it sits in the model, how it is quantized and which tensor it reads."""

    name: str          # module name of the conv in the model, e.g. "extractor.encoder.0.0.conv"
    weight_bits: int
    input_bits: int
    input_lower: float  # 0 (unsigned input) or −1 (ELU)
    tensor: str         # the activation tensor it reads: one quantizer (one scale) per tensor, see `quant_sites`


def quant_sites(model: QWNet, quant: QuantConfig) -> list[QuantSite]:
    """Every conv the plan quantizes, in module order (U_e's encoder, its decoder, then U_f's predictors).

    The tensors they read, each with one quantizer:

    * ``input``: U_e's input features (read by the first conv);
    * ``encoder{s}_0``, ``decoder{s}_{k}``: a unit's output read by the next conv of its block;
    * ``concat{s}``: the two tensors decoder s concatenates, encoder s's output (its skip, also read pooled by
      encoder s+1) and the features one scale down (decoder s+1's output or the bottleneck, also read by
      predictor s+1). They share a quantizer, so the concatenation is one tensor with one scale;
    * ``features0``: decoder 0's output (read by predictor 0).

    Max pooling and nearest upsampling commute with a monotone quantizer, so a conv that reads a pooled or upsampled
    tensor sees the same codes as one that reads the tensor itself.
    """
    act_lower = ELU_MINIMUM if model.cfg.activation == "elu" else 0.0
    extractor, n = model.extractor, len(model.extractor.encoder)

    def unit(name: str, tensor: str) -> QuantSite:
        if tensor == "input":  # 8-bit, unsigned: the input features are >= 0 (compressed colour, gray, gradients)
            return QuantSite(f"extractor.{name}.conv", quant.first_weight_bits, quant.first_input_bits, 0.0, tensor)
        return QuantSite(f"extractor.{name}.conv", quant.extractor_weight_bits, quant.extractor_act_bits, act_lower,
                         tensor)

    sites = []
    for s in range(n):
        sites += [unit(f"encoder.{s}.0", f"concat{s - 1}" if s else "input"), unit(f"encoder.{s}.1", f"encoder{s}_0")]
    for s in range(n - 1):
        sites += [unit(f"decoder.{s}.{k}", f"decoder{s}_{k - 1}" if k else f"concat{s}")
                  for k in range(len(extractor.decoder[s]))]
    sites += [QuantSite(f"filter.predictors.{s}", quant.predictor_weight_bits, quant.extractor_act_bits, act_lower,
                        f"concat{s - 1}" if s else "features0") for s in range(len(model.filter.predictors))]
    return sites


def quant_tensors(sites: list[QuantSite]) -> dict[str, tuple[int, float]]:
    """Bits and lower range end of every tensor the sites read, in first-use order."""
    return {s.tensor: (s.input_bits, s.input_lower) for s in sites}


def _parent_and_key(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, key = name.rpartition(".")
    return model.get_submodule(parent_name), key


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, key = _parent_and_key(model, name)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(key)] = new
    else:
        setattr(parent, key, new)


def batch_norm_of(model: nn.Module, conv_name: str) -> tuple[str, nn.Module] | None:
    """The BN (or Identity) right after a ConvBNAct's conv, with its module name; None for a bare conv."""
    parent, _ = _parent_and_key(model, conv_name)
    if isinstance(parent, ConvBNAct):
        return conv_name.rpartition(".")[0] + ".bn", parent.bn
    return None


def mse_optimal_clip(values: torch.Tensor, bits: int, lower: float, candidates: int = 64) -> float:
    """The clip in (0, max] that minimizes the quantization MSE of `values` (a calibration sample)."""
    top = float(values.max())
    if top <= 0:
        return 1e-3
    best, best_err = top, float("inf")
    for clip in torch.linspace(top / candidates, top, candidates).tolist():
        quantizer = ActQuant(bits, lower, clip)
        with torch.no_grad():
            err = float(((quantizer(values) - values) ** 2).mean())
        if err < best_err:
            best, best_err = clip, err
    return best


@torch.no_grad()
def calibrate_clips(model: QWNet, sites: list[QuantSite], sequences: Iterable[dict[str, torch.Tensor]],
                    sample_size: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Initial activation clips per tensor: run the float model over sequences and pick MSE-optimal clips.

    A tensor's sample pools what every conv reading it sees. Each sequence is a dict with batched ``color``
    (B,T,3,H,W), ``motion`` (B,T,2,H,W), ``history_valid`` (B,T).
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = quant_tensors(sites)
    seen: dict[str, list[torch.Tensor]] = {tensor: [] for tensor in tensors}

    def hook(name: str):
        def record(_module, inputs):
            flat = inputs[0].detach().float().flatten().cpu()
            keep = torch.randperm(flat.numel(), generator=generator)[:sample_size]
            seen[name].append(flat[keep])
        return record

    handles = [model.get_submodule(s.name).register_forward_pre_hook(hook(s.tensor)) for s in sites]
    was_training = model.training
    model.eval()
    try:
        for seq in sequences:
            model(*sequence_inputs(seq, model.cfg.jitter_input))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    clips = {}
    for tensor, (bits, lower) in tensors.items():
        if not seen[tensor]:
            raise ValueError("calibration saw no frames")
        values = torch.cat(seen[tensor])
        values = values[torch.randperm(values.numel(), generator=generator)[:sample_size]]
        clips[tensor] = mse_optimal_clip(values, bits, lower) if is_integer(bits) else 1.0
    return clips


def check_quantizable(model: nn.Module) -> None:
    """Raise ValueError for a model the integer plan cannot express: GroupNorm normalizes each image with its own
    statistics at inference, so unlike BatchNorm it cannot be folded into the conv before it (norm none has no
    normalization to fold: its convs carry a bias)."""
    if any(isinstance(m, nn.GroupNorm) for m in model.modules()):
        raise ValueError("model.norm 'group' cannot be quantized: GroupNorm uses each image's own statistics and "
                         "does not fold into the convs; train with norm 'batch' or 'none' to quantize")


def quantize_model(model: QWNet, quant: QuantConfig, clips: dict[str, float] | None = None) -> QWNet:
    """A QAT copy of a full-precision QWNet: BN folded, every site of the plan a `QuantConv`, and one activation
    quantizer per tensor in ``qmodel.act_quant`` (tensor name → `ActQuant`), shared by the convs that read it.

    `clips` (tensor name → initial activation clip, see `calibrate_clips`) default to 1.0.
    """
    check_quantizable(model)
    qmodel = copy.deepcopy(model).eval()
    sites = quant_sites(qmodel, quant)
    qmodel.act_quant = nn.ModuleDict({tensor: ActQuant(bits, lower, (clips or {}).get(tensor, 1.0))
                                      for tensor, (bits, lower) in quant_tensors(sites).items()})
    for site in sites:
        conv = qmodel.get_submodule(site.name)
        bn = batch_norm_of(qmodel, site.name)
        folded = fold_batch_norm(conv, bn[1] if bn else nn.Identity())
        replace_module(qmodel, site.name, QuantConv(folded, site.weight_bits, qmodel.act_quant[site.tensor]))
        if bn:
            replace_module(qmodel, bn[0], nn.Identity())
    return qmodel


def quantized_convs(model: nn.Module) -> Iterator[tuple[str, QuantConv]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantConv):
            yield name, module


# ----------------------------------------------------------------------------------------------- checkpoints


def is_quantized_state(state: dict[str, torch.Tensor]) -> bool:
    """True for the state dict of a `quantize_model` result (it holds activation clips)."""
    return any(key.startswith("act_quant.") for key in state)
