"""`qw model-stats`: parameters and multiply-accumulates per layer, and the MAC share per precision of the plan.

Counting rules (they reproduce the public sample's published cost, 1.244 M parameters and 173.6 GMAC per
1920×1088 frame, from the convolutions alone):
* conv MACs = output pixels × output channels × input channels × kernel area (bias adds not counted);
* kernel application in U_f = one MAC per predicted weight per colour channel per pixel, counted as float
  (it adds ~0.1 % to the total: 173.8 GMAC for the sample; the "conv-only" total is shown too);
* softmax, pooling, upsampling, warp, range compression and input processing are not counted (no MACs of note).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from qw.datagen.errors import QwError
from qw.training.config import Config, QuantConfig, load_config
from qw.training.model.qwnet import QWNet


@dataclass(frozen=True)
class LayerStats:
    name: str
    shape: str
    params: int
    macs: int
    precision: str  # operand bit widths, e.g. "W4A4", "W8A8", "W8 (A4 in)", or "float"
    bits: str       # the class its MACs are reported in: the widest integer operand ("4-bit", "8-bit") or "float"


@dataclass(frozen=True)
class ModelStats:
    preset: str | None
    height: int
    width: int
    layers: list[LayerStats]
    activation_range: str

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def conv_macs(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.precision != "float")

    def share_by_precision(self) -> dict[str, float]:
        shares: dict[str, float] = {}
        for layer in self.layers:
            shares[layer.bits] = shares.get(layer.bits, 0.0) + layer.macs / self.macs
        return dict(sorted(shares.items()))


def parse_resolution(text: str) -> tuple[int, int]:
    """'1920x1080' -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise QwError(f"resolution {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w <= 0 or h <= 0:
        raise QwError(f"resolution {text!r}: width and height must be positive")
    return h, w


def _conv_precision(name: str, model: QWNet, quant: QuantConfig) -> tuple[str, str]:
    """(operand widths, precision class) of a conv under the quantization plan."""
    first = next(n for n, m in model.named_modules() if m is model.extractor.first.conv)
    if name == first:
        w, a = quant.first_weight_bits, quant.first_input_bits
        return f"W{w}A{a}", f"{max(w, a)}-bit"
    if name.startswith("extractor."):
        w, a = quant.extractor_weight_bits, quant.extractor_act_bits
        return f"W{w}A{a}", f"{max(w, a)}-bit"
    w, a = quant.predictor_weight_bits, quant.extractor_act_bits
    return f"W{w} (A{a} in)", f"{max(w, a)}-bit"


def _conv_macs(model: nn.Module, height: int, width: int) -> dict[str, tuple[int, str]]:
    """MACs and a shape string per Conv2d, from one forward pass on the meta device (no memory, no compute)."""
    found: dict[str, tuple[int, str]] = {}

    def hook(name: str):
        def record(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
            kh, kw = module.kernel_size
            macs = output[0].numel() * module.in_channels // module.groups * kh * kw
            found[name] = (macs, f"{module.in_channels}->{module.out_channels} {kh}x{kw} @{output.shape[-1]}x{output.shape[-2]}")
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        meta = model.to("meta")
        image = torch.zeros(1, 3, height, width, device="meta")
        jitter = torch.zeros(1, 2, device="meta") if model.cfg.jitter_input else None  # a model that reads it needs it
        with torch.no_grad():
            meta.step(image, image, jitter)
    finally:
        for handle in handles:
            handle.remove()
    return found


def model_stats(cfg: Config, height: int = 1080, width: int = 1920) -> ModelStats:
    """Statistics for one frame; sizes that are not multiples of 16 are counted padded, as inference pads them."""
    model = QWNet(cfg.model).eval()  # counting only; in training mode BatchNorm refuses a 1×1 bottleneck (a 1x1 frame)
    m = cfg.model.size_multiple
    height, width = height + (-height % m), width + (-width % m)
    conv_params = {n: sum(p.numel() for p in mod.parameters()) for n, mod in model.named_modules()
                   if isinstance(mod, nn.Conv2d)}
    bn_params = {n.rsplit(".", 1)[0] + ".conv": sum(p.numel() for p in mod.parameters())
                 for n, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    layers = [
        LayerStats(name, shape, conv_params[name] + bn_params.get(name, 0), macs, *_conv_precision(name, model, cfg.quant))
        for name, (macs, shape) in _conv_macs(model, height, width).items()
    ]
    for s, macs in enumerate(model.filter.kernel_macs(height, width)):
        layers.append(LayerStats(f"filter.kernels.{s}", f"3 ch @{width >> s}x{height >> s}", 0, macs, "float", "float"))
    act = ("asymmetric [-1, clip] (ELU outputs reach -1)" if cfg.model.activation == "elu"
           else "unsigned [0, clip] (ReLU)")
    return ModelStats(cfg.preset, height, width, layers, act)


def format_stats(stats: ModelStats, per_layer: bool = True) -> str:
    lines = []
    if per_layer:
        lines.append(f"{'layer':34} {'shape':30} {'params':>10} {'MMAC':>10}  precision")
        for layer in stats.layers:
            lines.append(f"{layer.name:34} {layer.shape:30} {layer.params:>10,} {layer.macs / 1e6:>10.1f}  {layer.precision}")
        lines.append("")
    lines += [
        f"config: {stats.preset or 'custom'}   frame: {stats.width}x{stats.height}",
        f"parameters: {stats.params:,} ({stats.params / 1e6:.3f} M; BN counted, folded away in the quantized model)",
        f"MACs: {stats.macs / 1e9:.2f} G per frame ({stats.conv_macs / 1e9:.2f} G in convolutions, "
        f"{(stats.macs - stats.conv_macs) / 1e9:.2f} G kernel application)",
        "share of MACs by precision: " + ", ".join(f"{k} {v:.1%}" for k, v in stats.share_by_precision().items()),
        f"U_e activation quantizer range: {stats.activation_range}",
    ]
    return "\n".join(lines)


def stats_json(stats: ModelStats) -> dict:
    """`qw model-stats --json`: totals, the MAC share per precision class and every layer."""
    return {"preset": stats.preset, "resolution": [stats.width, stats.height], "params": stats.params,
            "macs": stats.macs, "share_by_precision": stats.share_by_precision(),
            "activation_range": stats.activation_range, "layers": [asdict(layer) for layer in stats.layers]}


def model_stats_report(config: str | None, resolution: str, per_layer: bool = True, as_json: bool = False) -> str:
    """`qw model-stats`: the statistics of a config (preset name or YAML path) at a resolution, as text or JSON."""
    height, width = parse_resolution(resolution)
    stats = model_stats(load_config(config), height, width)
    return json.dumps(stats_json(stats), indent=2) if as_json else format_stats(stats, per_layer)
