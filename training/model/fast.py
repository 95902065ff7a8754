"""Fast execution paths for QW-Net that compute what `qw.training.model.qwnet` computes (to float rounding).

What is here, and why it is faster on a GPU (measured by ``benchmarks/gpu.py``):

* `fused_filter_pyramid` / `fuse_filter`: U_f's softmax and 3×3 kernel application written as one expression per
  kernel group (exponentials, weighted sum of the nine shifted taps, one division at the end). Eagerly it is the
  same work as `qw.training.model.qwnet.filter_pyramid`; under `torch.compile` each group becomes one generated kernel
  (Triton on GPU, C++ on CPU) instead of ~20 launches with full-resolution intermediates.
* `channels_last_frames`: (B,T,C,H,W) inputs whose every frame slice is channels_last, so a channels_last model
  never converts layouts inside the recurrence.
* `fold_batch_norms`: inference copy with batch norm folded into the convs (`qw.training.quantization.fake_quant.fold_batch_norm`).
* `compile_step`: `torch.compile` of `QWNet.step` (one frame), reused by all T steps of the recurrence: a small
  graph that compiles once, forward and backward.
* `frame_step` + `CudaGraphFrame`: one recurrent inference frame (warp + step) replayed from a captured CUDA graph,
  which removes the per-kernel launch cost that dominates a 1080p frame (`qw.training.model.warp.warp` and `QWNet.step`
  copy nothing from host memory, which a graph could not capture).
* `accumulate_gradients`, `train_step` / `train_step_terms` and `DevicePrefetcher`: a training step with no host
  synchronization (the loss stays on the device) and batches copied from pinned memory on a side stream, one batch ahead; the loop of
  `qw.training.train.loop` runs on them.
* `Int8Conv` / `int8_model`: U_e's and U_f's quantized convs as int8 GEMMs (`torch._int_mm`, int32 accumulation)
  on the exported integer network of `qw.training.export.integer_ref`; exact, so it equals that reference bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from qw.training.config import LossSpec
from qw.training.losses import qwnet_loss
from qw.training.model.qwnet import (KERNEL, UP_WEIGHTS, ConvBNAct, QWNet, input_weights, kernel_taps,
                                    sequence_inputs)
from qw.training.quantization.fake_quant import activation_codes, fold_batch_norm, replace_module, rescale

# ------------------------------------------------------------------------------------------------ filter network


def softmax_filter(logits: torch.Tensor, taps: list[torch.Tensor], lobe: float = 0.0) -> torch.Tensor:
    """Σ_k w_k · taps[k] over the channel dim of `logits` (B,K,H,W), in float32, with w = softmax(logits) widened by
    `lobe` (`qw.training.model.qwnet.with_lobe`).

    Normalizes once after the weighted sum instead of dividing every weight: one pass for a fused kernel.
    """
    logits = logits.float()
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    total = e[:, :1] * taps[0]
    for k in range(1, len(taps)):
        total = total + e[:, k:k + 1] * taps[k]
    filtered = total / e.sum(dim=1, keepdim=True)
    return (1 + lobe) * filtered - lobe / len(taps) * sum(taps) if lobe else filtered


def fused_filter_pyramid(raw: list[torch.Tensor], color: torch.Tensor, history: torch.Tensor,
                         padding: str = "replicate", input_kernel: int = 3, lobe: float = 0.0) -> torch.Tensor:
    """`qw.training.model.qwnet.filter_pyramid` with each softmax fused into its kernel application."""
    x = softmax_filter(raw[0][:, :input_weights(input_kernel)],
                       kernel_taps(color, padding, input_kernel) + kernel_taps(history, padding, input_kernel), lobe)
    skips = [x]
    for s in range(1, len(raw)):
        x = softmax_filter(raw[s][:, :KERNEL], kernel_taps(F.avg_pool2d(x, 2), padding))
        skips.append(x)
    for s in reversed(range(len(raw) - 1)):
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = softmax_filter(raw[s][:, -UP_WEIGHTS:], kernel_taps(up, padding) + [skips[s]])
    return x


class FusedKernelFilter(nn.Module):
    """U_f with the fused pyramid; holds the original ``predictors`` (same parameters, same state-dict keys)."""

    def __init__(self, predictors: nn.ModuleList, padding: str = "replicate", input_kernel: int = 3,
                 lobe: float = 0.0):
        super().__init__()
        self.predictors = predictors
        self.padding = padding
        self.input_kernel = input_kernel
        self.lobe = lobe

    def forward(self, features: list[torch.Tensor], color: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return fused_filter_pyramid([p(f) for p, f in zip(self.predictors, features)], color, history, self.padding,
                                    self.input_kernel, self.lobe)


def fuse_filter(model: QWNet) -> QWNet:
    """Swap the model's U_f for the fused one, in place (parameters shared); returns the model."""
    model.filter = FusedKernelFilter(model.filter.predictors, model.filter.padding, model.filter.input_kernel,
                                     model.filter.lobe)
    return model


# ------------------------------------------------------------------------------------------------ layout, folding


def channels_last_frames(x: torch.Tensor) -> torch.Tensor:
    """(B,T,C,H,W) with the same values, laid out so that every frame x[:, t] is channels_last."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every ConvBNAct's batch norm folded into its conv (inference only)."""
    folded = copy.deepcopy(model).eval()
    for name, unit in list(folded.named_modules()):
        if isinstance(unit, ConvBNAct) and not isinstance(unit.bn, nn.Identity):
            replace_module(folded, f"{name}.conv", fold_batch_norm(unit.conv, unit.bn))
            replace_module(folded, f"{name}.bn", nn.Identity())
    return folded


def compile_step(model: QWNet, mode: str | None = None, backend: str | Callable = "inductor") -> QWNet:
    """Compile the one-frame `model.step` in place (static shapes); `forward`'s recurrence calls the compiled one.

    `QWNet.forward` passes the colour itself as history on a block's first frame, and a warped image (whose
    layout follows `grid_sample` and which requires grad in training) later: an aliased pair, other strides or
    another requires_grad would each compile another graph. The history is therefore handed over as its own
    tensor in the colour's layout, requiring grad whenever grad mode is on, so all T steps share one graph (the
    price: a gradient for the first frame's input history that nobody reads).
    """
    compiled = torch.compile(model.step, mode=mode, dynamic=False, backend=backend)

    def step(color: torch.Tensor, history: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        layout = torch.channels_last if _is_channels_last(color) else torch.contiguous_format
        history = history.clone(memory_format=layout) if history is color else history.contiguous(memory_format=layout)
        if torch.is_grad_enabled() and not history.requires_grad:
            history = history.detach().requires_grad_()
        return compiled(color, history, jitter)

    model.step = step
    return model


def _is_channels_last(x: torch.Tensor) -> bool:
    """Channels innermost (also for a frame sliced out of `channels_last_frames`, which is not contiguous)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1


# ------------------------------------------------------------------------------------------------ inference


def frame_step(model: QWNet, color: torch.Tensor, motion: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """One recurrent inference frame with a valid history: warp the previous output, then run the network.

    Any QWNet (float, fused, folded, quantized or integer); it copies nothing from the host, so a CUDA graph can
    capture it (`CudaGraphFrame`).
    """
    return model.step(color, model.warp_history(previous, motion))


class CudaGraphFrame:
    """A function of fixed-shape CUDA tensors, captured once as a CUDA graph and replayed per call.

    Inputs are copied into the graph's static buffers; the returned tensor is the graph's static output, which the
    next call overwrites (clone it to keep it). The function must not synchronize with the host.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *example: torch.Tensor, warmup: int = 3):
        self.inputs = [x.clone() for x in example]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires (cuDNN/cuBLAS handles, caches)
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for static, x in zip(self.inputs, inputs):
            if static.data_ptr() != x.data_ptr():
                static.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.output


# ------------------------------------------------------------------------------------------------ training


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor], loss: LossSpec, amp: torch.dtype | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output for a batch (autocast to `amp` when given) and its `qwnet_loss` terms."""
    cfg = (model.module if isinstance(model, DistributedDataParallel) else model).cfg  # the model's conventions
    with torch.autocast(batch["color"].device.type, dtype=amp, enabled=amp is not None):
        output = model(*sequence_inputs(batch, cfg.jitter_input))
    return output, qwnet_loss(output, batch["reference"], batch["motion"], batch["history_valid"], loss,
                              warp_padding=cfg.warp_padding, color=batch["color"] if cfg.temporal_reset_term else None)


def accumulate_gradients(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], loss: LossSpec,
                         amp: torch.dtype | None, scaler: torch.amp.GradScaler | None = None
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backward over the given micro-batches (gradient accumulation) into the parameters' ``.grad``.

    Returns the mean loss terms and each micro-batch's loss (K,), on device: nothing here waits for the device. A
    DDP model all-reduces its gradients on the last micro-batch only; `scaler` (float16 autocast) scales the loss.
    """
    batches = list(batches)
    scaler = scaler or torch.amp.GradScaler(enabled=False)  # disabled: a pass-through
    totals: dict[str, torch.Tensor] = {}
    losses = []
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext():
            _, terms = forward_loss(model, batch, loss, amp)
            scaler.scale(terms["loss"] / len(batches)).backward()
        totals = {k: totals.get(k, 0.0) + v.detach() / len(batches) for k, v in terms.items()}
        losses.append(terms["loss"].detach())
    return totals, torch.stack(losses)


def train_step_terms(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, torch.Tensor]],
                     loss: LossSpec, amp: torch.dtype | None, scaler: torch.amp.GradScaler | None = None
                     ) -> dict[str, torch.Tensor]:
    """One optimizer step over the given micro-batches (`accumulate_gradients`); the mean loss terms, on device."""
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    optimizer.zero_grad(set_to_none=True)
    totals, _ = accumulate_gradients(model, batches, loss, amp, scaler)
    scaler.step(optimizer)
    scaler.update()
    return totals


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, torch.Tensor]],
               loss: LossSpec, amp: torch.dtype | None) -> torch.Tensor:
    """`train_step_terms`' mean loss alone, on device (``float(loss)`` is the caller's one sync)."""
    return train_step_terms(model, optimizer, batches, loss, amp)["loss"]


class DevicePrefetcher:
    """Batches from a (pin_memory) DataLoader, moved to the device one batch ahead on a side CUDA stream.

    On CPU it only passes batches through. `on_device`, when given, runs on each moved batch (on the side stream:
    e.g. augmentation, overlapping the previous step's compute); then, with `channels_last`, image arrays get
    channels_last frames. The block indices and drawn augmentations stay on the host: bookkeeping that reads them
    must not wait for the device.
    """

    IMAGES = ("color", "reference", "motion")
    HOST = ("index", "transform")

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]], device: torch.device, channels_last: bool = False,
                 on_device: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None):
        self.batches, self.device, self.channels_last = iter(batches), torch.device(device), channels_last
        self.on_device = on_device
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ahead = self._load()

    def _move(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v if not isinstance(v, torch.Tensor) or k in self.HOST else v.to(self.device, non_blocking=True)
               for k, v in batch.items()}
        if self.on_device is not None:
            out = self.on_device(out)
        if self.channels_last:
            out.update({k: channels_last_frames(out[k]) for k in self.IMAGES if k in out})
        return out

    def _load(self) -> dict[str, torch.Tensor] | None:
        batch = next(self.batches, None)
        if batch is None or self.stream is None:
            return None if batch is None else self._move(batch)
        with torch.cuda.stream(self.stream):
            return self._move(batch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.ahead
        if batch is None:
            raise StopIteration
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for v in batch.values():
                if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                    v.record_stream(current)  # the allocator must not reuse it while the compute stream reads it
        self.ahead = self._load()
        return batch


# ------------------------------------------------------------------------------------------------ INT8


INT8_MIN, INT8_MAX = -128, 127
INT_MM_ALIGN = 8      # torch._int_mm needs K and N multiples of 8 ...
INT_MM_MIN_ROWS = 17  # ... and more than 16 rows


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Int8Conv(nn.Module):
    """An `IntegerConv` run as one int8 × int8 → int32 GEMM (`torch._int_mm`) over channels_last im2col columns.

    Activation codes c = q − z are shifted by a per-layer constant o into int8 where their range needs it (8-bit
    unsigned input: [0, 255] − 128); Σ w·c = Σ w·(c − o) + o·Σ w holds for every pixel, zero-padded borders
    included, because padding is applied to c (code 0 = activation 0) before the shift. Exact, like the reference.
    """

    def __init__(self, conv: nn.Module):  # a qw.training.export.integer_ref.IntegerConv
        super().__init__()
        out_ch, in_ch, kh, kw = conv.weight.shape
        zero = int(conv.act_zero)
        low, high = -zero, conv.qmax - zero
        self.offset = 0 if INT8_MIN <= low and high <= INT8_MAX else low - INT8_MIN
        self.padding, self.kernel, self.out_channels, self.qmax = conv.padding, (kh, kw), out_ch, conv.qmax
        k = in_ch * kh * kw
        self.k_pad = _round_up(k, INT_MM_ALIGN) - k
        # (N, K) in the columns' (dy, dx, c) order, zero rows/columns up to multiples of 8: zero weights add nothing.
        weight = conv.weight.permute(0, 2, 3, 1).reshape(out_ch, k)
        weight = F.pad(weight, (0, self.k_pad, 0, _round_up(out_ch, INT_MM_ALIGN) - out_ch))
        self.register_buffer("weight", weight.to(torch.int8))
        self.register_buffer("correction", self.offset * conv.weight.sum(dim=(1, 2, 3)).to(torch.int32))
        for name in ("weight_scale", "bias", "act_scale", "act_zero"):
            self.register_buffer(name, getattr(conv, name).clone())

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """(B·H·W, K) int8 im2col of the shifted codes of x (B,C,H,W); built in int8 (a quarter of float's bytes)."""
        codes = activation_codes(x.float(), self.act_scale, self.act_zero, self.qmax)
        codes = F.pad(codes, (self.padding,) * 4)  # code 0 = activation 0: the float conv's zero padding
        codes = (codes - self.offset).to(torch.int8).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
        b, hp, wp, _ = codes.shape
        kh, kw = self.kernel
        h, w = hp - kh + 1, wp - kw + 1
        taps = [codes[:, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)]
        if self.k_pad:
            taps.append(codes.new_zeros((b, h, w, self.k_pad)))  # meets zero weight rows
        return torch.cat(taps, dim=-1).reshape(b * h * w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cols = self.columns(x)
        rows = cols.shape[0]
        if rows < INT_MM_MIN_ROWS:
            cols = F.pad(cols, (0, 0, 0, INT_MM_MIN_ROWS - rows))
        acc = torch._int_mm(cols, self.weight.t())[:rows, :self.out_channels] + self.correction
        acc = acc.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)  # channels_last (B,N,H,W)
        return rescale(acc, self.act_scale, self.weight_scale, self.bias)


def int8_model(integer_model: nn.Module) -> nn.Module:
    """A copy of a `qw.training.export.integer_ref.load_integer_model` network with every `IntegerConv` an `Int8Conv`."""
    from qw.training.export.integer_ref import IntegerConv  # imported here: it pulls in the export format (and OpenEXR)

    model = copy.deepcopy(integer_model)
    for name, module in list(model.named_modules()):
        if isinstance(module, IntegerConv):
            replace_module(model, name, Int8Conv(module))
    return model
