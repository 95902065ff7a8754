"""QW-Net: a recurrent feature extractor U_e (U-Net) predicting per-pixel kernels for a filter pyramid U_f.

    I_w^k = warp(I_o^{k-1}, I_v^k)           (history; the current input on a block's first frame and after cuts)
    I_o^k = U_f(U_e(I_a^k, I_w^k), I_a^k, I_w^k)

Structure the quantizer relies on (names are stable):

* ``model.extractor`` is U_e. Every convolution in it is a `ConvBNAct` (``.conv``, ``.bn``, ``.act``); the first
  one is ``model.extractor.first``. Encoder: two 3×3 convs per scale, 2×2 max pool between scales. Decoder: 2×2
  nearest upsample, concat skip, 1×1 projection, ``decoder_convs[i]`` 3×3 convs.
* ``model.filter`` is U_f. Its only weights are the 1×1 kernel-prediction convs ``model.filter.predictors``
  (one per scale, on the U_e decoder output of that scale); softmax, kernel application, pooling and upsampling
  are the functions below.

Filter pyramid, per scale s (full resolution s=0 … bottleneck s=n−1), weights shared by R, G, B:
  s=0:      18 weights, two 3×3 kernels on I_a and I_w summed (one softmax over all 18) -> skip_0
            (two 5×5 kernels, 50 weights, with ``input_kernel: 5``; negative taps with ``input_kernel_lobe``);
            10 weights for the output up filter.
  0<s<n−1:  2×2 average pool, 9 weights (3×3 kernel) -> skip_s; 10 weights for the up filter.
  s=n−1:    2×2 average pool, 9 weights (3×3 kernel).
  up:       bilinear 2× upsample, 3×3 kernel (9) + 1 weight on skip_s, one softmax over the 10.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from qw.training.config import ModelConfig
from qw.training.model.hdr import compress
from qw.training.model.warp import warp

# Rec. 709 luma weights, applied to the range-compressed colour for the optional input processing.
LUMA = (0.2126, 0.7152, 0.0722)
KERNEL = 9          # 3×3 kernel weights
UP_WEIGHTS = KERNEL + 1
PASS_THROUGH_LOGIT = 3.0  # initial logit bonus, see KernelFilter._start_as_pass_through


GROUP_NORM_CHANNELS = 8  # GroupNorm groups: the largest divisor of a width that is at most this many


def norm_layer(norm: str, channels: int, bn_momentum: float | None = 0.1) -> nn.Module:
    """BatchNorm2d, GroupNorm or Identity for `channels` (see `ModelConfig.norm`)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=bn_momentum)
    if norm == "group":
        return nn.GroupNorm(max(g for g in range(1, GROUP_NORM_CHANNELS + 1) if channels % g == 0), channels)
    return nn.Identity()


class ConvBNAct(nn.Module):
    """Conv2d (same padding) → BatchNorm2d, GroupNorm or Identity → ELU or ReLU. The unit the quantizer replaces."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, activation: str, bn_momentum: float | None = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")
        self.bn = norm_layer(norm, cout, bn_momentum)
        self.act = nn.ELU() if activation == "elu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class FeatureExtractor(nn.Module):
    """U_e: returns the decoder output at every scale (full resolution first, the bottleneck last)."""

    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        w = cfg.widths
        unit = lambda cin, cout, k: ConvBNAct(cin, cout, k, cfg.norm, cfg.activation, cfg.bn_momentum)  # noqa: E731
        self.encoder = nn.ModuleList(
            nn.Sequential(unit(in_channels if s == 0 else w[s - 1], w[s], 3), unit(w[s], w[s], 3))
            for s in range(len(w))
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(unit(w[s + 1] + w[s], w[s], 1), *(unit(w[s], w[s], 3) for _ in range(cfg.decoder_convs[s])))
            for s in range(len(w) - 1)
        )

    @property
    def first(self) -> ConvBNAct:
        """The convolution that sees the network input (8-bit weights and input in the quantization plan)."""
        return self.encoder[0][0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for s, block in enumerate(self.encoder):
            x = block(x if s == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        features = [x]
        for s in reversed(range(len(self.decoder))):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[s](torch.cat([x, skips[s]], dim=1))
            features.insert(0, x)
        return features


def input_weights(input_kernel: int = 3) -> int:
    """Full-resolution weights on the current frame and the history: two `input_kernel`² kernels."""
    return 2 * input_kernel ** 2


def predictor_outputs(num_scales: int, input_kernel: int = 3) -> list[int]:
    """Kernel weights predicted per scale, full resolution first."""
    return [input_weights(input_kernel) + UP_WEIGHTS] + [KERNEL + UP_WEIGHTS] * (num_scales - 2) + [KERNEL]


def replicate_pad(x: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Pad H and W by `r` replicated pixels. Built from slices and concatenation, not F.pad(mode="replicate"),
    whose backward failed under torch.compile (inductor stride assertion in replication_pad2d_backward, torch 2.13)."""
    x = torch.cat([x[..., :1, :]] * r + [x] + [x[..., -1:, :]] * r, dim=-2)
    return torch.cat([x[..., :1]] * r + [x] + [x[..., -1:]] * r, dim=-1)


def kernel_taps(image: torch.Tensor, padding: str = "replicate", size: int = 3) -> list[torch.Tensor]:
    """The size² neighbours of every pixel, in row-major kernel order; borders replicate or read zeros."""
    h, w = image.shape[-2:]
    r = size // 2
    padded = replicate_pad(image, r) if padding == "replicate" else F.pad(image, (r, r, r, r))
    return [padded[..., dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)]


def apply_kernel(image: torch.Tensor, weights: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """Per-pixel square filter: image (B,C,H,W), weights (B,k²,H,W) in row-major kernel order, the same for every C.

    With replicated borders normalized weights keep a constant image constant; "zeros" is the public sample's way.
    """
    out = image.new_zeros(())
    for k, tap in enumerate(kernel_taps(image, padding, math.isqrt(weights.shape[1]))):
        out = out + weights[:, k:k + 1] * tap
    return out


def with_lobe(weights: torch.Tensor, lobe: float) -> torch.Tensor:
    """(1 + lobe)·weights − lobe/n of n convex weights (dim 1): the sum stays 1, a tap can reach −lobe/n."""
    return (1 + lobe) * weights - lobe / weights.shape[1] if lobe else weights


def normalize_weights(raw: list[torch.Tensor], input_kernel: int = 3,
                      lobe: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Softmax per kernel group, per scale: (input or down weights, up weights or None at the bottleneck).

    Full resolution: the 2·input_kernel² input weights share one softmax, widened by `lobe`
    (`ModelConfig.input_kernel_lobe`); every 3×3 down kernel and every 10-weight up filter has its own. Computed in
    float32 whatever the autocast dtype.
    """
    n = len(raw)
    out = []
    for s, w in enumerate(raw):
        w = w.float()
        first = torch.softmax(w[:, :input_weights(input_kernel) if s == 0 else KERNEL], dim=1)
        out.append((with_lobe(first, lobe) if s == 0 else first,
                    torch.softmax(w[:, -UP_WEIGHTS:], dim=1) if s < n - 1 else None))
    return out


def filter_pyramid(raw: list[torch.Tensor], color: torch.Tensor, history: torch.Tensor,
                   padding: str = "replicate", input_kernel: int = 3, lobe: float = 0.0) -> torch.Tensor:
    """U_f's filtering, given the raw (pre-softmax) predictor outputs per scale; acts on linear colour."""
    weights = normalize_weights(raw, input_kernel, lobe)
    full, taps = weights[0][0], input_kernel ** 2
    x = apply_kernel(color, full[:, :taps], padding) + apply_kernel(history, full[:, taps:], padding)
    skips = [x]
    for down, _ in weights[1:]:
        x = apply_kernel(F.avg_pool2d(x, 2), down, padding)
        skips.append(x)
    for s in reversed(range(len(weights) - 1)):
        up = weights[s][1]
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = apply_kernel(x, up[:, :KERNEL], padding) + up[:, KERNEL:] * skips[s]
    return x


class KernelFilter(nn.Module):
    """U_f: 1×1 kernel-prediction convs (the only weights) and the filter pyramid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.predictors = nn.ModuleList(
            nn.Conv2d(width, count, 1)
            for width, count in zip(cfg.widths, predictor_outputs(cfg.num_scales, cfg.input_kernel))
        )
        self.padding = cfg.kernel_padding
        self.input_kernel = cfg.input_kernel
        self.lobe = cfg.input_kernel_lobe
        self._start_as_pass_through()

    @torch.no_grad()
    def _start_as_pass_through(self, logit: float = PASS_THROUGH_LOGIT) -> None:
        """Bias the centre tap of the current frame's and the down kernels, and every skip weight, so that the
        untrained filter is close to passing the current frame through. From default (uniform) weights, a heavy
        blur, a 300-step overfit run sat on a plateau for ~230 steps and ended below the aliased input's PSNR
        (32.1 vs 35.3 dB); from this start it ended above it (35.9 dB). See docs/training.md.

        Larger input kernels get a larger bonus, so that the centre tap starts with the same share of its softmax
        as in the paper's 18 (~0.54)."""
        n = input_weights(self.input_kernel)
        for s, conv in enumerate(self.predictors):
            if s == 0:
                conv.bias[self.input_kernel ** 2 // 2] += logit + math.log((n - 1) / (input_weights() - 1))
            else:
                conv.bias[KERNEL // 2] += logit
            if s < len(self.predictors) - 1:
                conv.bias[-1] += logit
        if self.lobe:  # the same starting kernel as convex weights: solve (1 + λ)·softmax(b') − λ/n = softmax(b)
            bias = self.predictors[0].bias[:n]
            bias.copy_(torch.log((torch.softmax(bias, 0) + self.lobe / n) / (1 + self.lobe)))

    def forward(self, features: list[torch.Tensor], color: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return filter_pyramid([p(f) for p, f in zip(self.predictors, features)], color, history, self.padding,
                              self.input_kernel, self.lobe)

    def kernel_macs(self, height: int, width: int, channels: int = 3) -> list[int]:
        """Multiply-adds of kernel application per scale: every predicted weight multiplies one value per channel."""
        return [count * channels * (height >> s) * (width >> s)
                for s, count in enumerate(predictor_outputs(len(self.predictors), self.input_kernel))]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient magnitude with replicated borders (eps keeps sqrt differentiable at 0)."""
    p = replicate_pad(x)
    dx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * 0.5
    dy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * 0.5
    return torch.sqrt(dx * dx + dy * dy + 1e-12)


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) Rec. 709 luma of (B,3,H,W); weights as Python scalars, so no host-to-device copy (CUDA-graph safe)."""
    return rgb[:, 0:1] * LUMA[0] + rgb[:, 1:2] * LUMA[1] + rgb[:, 2:3] * LUMA[2]


def input_features(color: torch.Tensor, history: torch.Tensor, processing: bool) -> torch.Tensor:
    """U_e's input from range-compressed colour and history: 6 channels, or 10 with grayscale and gradients."""
    if not processing:
        return torch.cat([color, history], dim=1)
    gray_c, gray_h = luma(color), luma(history)
    return torch.cat([color, history, gray_c, gray_h, gradient_magnitude(gray_c), gradient_magnitude(gray_h)], 1)


def jitter_planes(jitter: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,2) sample offsets in pixels (in [−0.5, 0.5]) as two constant (B,2,H,W) planes of offset + 0.5, in [0, 1]
    like the other inputs (the quantized first conv's input range starts at 0)."""
    return (jitter.to(like.device, like.dtype) + 0.5)[:, :, None, None].expand(-1, -1, *like.shape[-2:])


def input_channels(cfg: ModelConfig) -> int:
    return (10 if cfg.input_processing else 6) + 2 * cfg.jitter_input


class QWNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.extractor = FeatureExtractor(cfg, input_channels(cfg))
        self.filter = KernelFilter(cfg)

    def warp_history(self, previous: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """The previous output moved to the current frame, with this model's border convention and filter; a bicubic
        filter's undershoot is clamped, since the filters act on radiance, which is never negative."""
        warped = warp(previous, motion, self.cfg.warp_padding, self.cfg.warp_filter)
        return warped.clamp_min(0) if self.cfg.warp_filter == "bicubic" else warped

    def step(self, color: torch.Tensor, history_warped: torch.Tensor,
             jitter: torch.Tensor | None = None) -> torch.Tensor:
        """One frame: colour and warped history (B,3,H,W, linear HDR, H and W multiples of 16) -> output.

        `jitter` (B,2), the frame's sample offset in pixels, is read only by a model with ``jitter_input``, which
        needs it."""
        m = self.cfg.size_multiple
        if color.shape[-2] % m or color.shape[-1] % m:
            raise ValueError(f"QWNet.step needs height and width divisible by {m}, got {tuple(color.shape[-2:])}; "
                             "QWNet.forward pads other sizes")
        x = input_features(compress(color, self.cfg.hdr), compress(history_warped, self.cfg.hdr),
                           self.cfg.input_processing)
        if self.cfg.jitter_input:
            if jitter is None:
                raise ValueError("this QWNet reads each frame's jitter (model.jitter_input): pass it")
            x = torch.cat([x, jitter_planes(jitter, x)], dim=1)
        out = self.filter(self.extractor(x), color, history_warped)
        return out.clamp_min(0) if self.cfg.input_kernel_lobe else out  # negative taps can undershoot below 0

    def forward(self, color_seq: torch.Tensor, motion_seq: torch.Tensor, history_valid: torch.Tensor,
                jitter_seq: torch.Tensor | None = None) -> torch.Tensor:
        """Run the recurrence over (B,T,3,H,W) colour, (B,T,2,H,W) motion, (B,T) bool -> (B,T,3,H,W) float32;
        `jitter_seq` (B,T,2) for a model with ``jitter_input``.

        Sizes that are not multiples of 16 are reflect-padded at the bottom/right and cropped back.
        """
        h, w = color_seq.shape[-2:]
        color_seq, motion_seq = pad_to_multiple(color_seq, self.cfg.size_multiple), pad_to_multiple(
            motion_seq, self.cfg.size_multiple)
        outputs, previous = [], None
        for t in range(color_seq.shape[1]):
            color = color_seq[:, t].float()
            history = color
            if previous is not None:
                valid = history_valid[:, t].to(color.device).view(-1, 1, 1, 1)
                history = torch.where(valid, self.warp_history(previous, motion_seq[:, t]), color)
            previous = self.step(color, history, None if jitter_seq is None else jitter_seq[:, t])
            outputs.append(previous)
        return torch.stack(outputs, dim=1)[..., :h, :w]


def sequence_inputs(batch: dict[str, torch.Tensor], jitter: bool) -> tuple[torch.Tensor, ...]:
    """`QWNet.forward`'s arguments from a batch of blocks: colour, motion, history validity, and the jitter for a
    model that reads it (other models, e.g. wrapped ones, keep the three-argument interface)."""
    return (batch["color"], batch["motion"], batch["history_valid"]) + ((batch["jitter"],) if jitter else ())


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the last two dims of x (any leading dims) up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    lead = x.shape[:-2]
    padded = F.pad(x.reshape(-1, 1, h, w).float(), (0, pw, 0, ph), mode="reflect")
    return padded.reshape(*lead, h + ph, w + pw).to(x.dtype)
