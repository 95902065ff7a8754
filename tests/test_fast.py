"""qw.training.model.fast: the optimized paths compute what the plain model computes (CPU, small sizes)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from qw.training.model import fast
from qw.training.config import LossSpec, QuantConfig, load_config
from qw.training.export.qwq import exported_model, write_qwq
from qw.training.export.integer_ref import IntegerConv, load_integer_model
from qw.training.losses import qwnet_loss
from qw.training.model.qwnet import QWNet, filter_pyramid, predictor_outputs
from qw.training.quantization.fake_quant import quantize_model
from qw.training.model.warp import warp


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _model(preset: str = "paper", seed: int = 0) -> QWNet:
    """A model with uneven predicted kernels and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = QWNet(load_config(preset).model)
    for conv in model.filter.predictors:
        nn.init.normal_(conv.weight, std=2.0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


def _sequence(b: int = 2, t: int = 4, h: int = 32, w: int = 48, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[:, 0] = False
    valid[0, t // 2] = False  # a camera cut
    return {"color": (torch.rand(b, t, 3, h, w, generator=g) * 4).half(),
            "reference": (torch.rand(b, t, 3, h, w, generator=g) * 4).half(),
            "motion": (torch.randn(b, t, 2, h, w, generator=g) * 3).half(), "history_valid": valid}


@pytest.mark.parametrize("input_kernel, lobe", [(3, 0.0), (5, 0.0), (3, 1.0)])
def test_fused_filter_pyramid_matches_the_model_in_value_and_gradient(input_kernel: int, lobe: float) -> None:
    g = torch.Generator().manual_seed(0)
    raw = [(torch.randn(2, c, 64 >> s, 48 >> s, generator=g) * 4).requires_grad_()
           for s, c in enumerate(predictor_outputs(5, input_kernel))]
    color, history = torch.rand(2, 3, 64, 48, generator=g) * 8, torch.rand(2, 3, 64, 48, generator=g) * 8
    plain = filter_pyramid(raw, color, history, input_kernel=input_kernel, lobe=lobe)
    fused = fast.fused_filter_pyramid(raw, color, history, input_kernel=input_kernel, lobe=lobe)
    assert _rel(fused, plain) < 1e-6
    grads_plain = torch.autograd.grad(plain.square().sum(), raw)
    grads_fused = torch.autograd.grad(fused.square().sum(), raw)
    assert all(_rel(a, b) < 1e-4 for a, b in zip(grads_fused, grads_plain))  # float32 rounding, summed per scale


def test_fused_kernel_filter_compiles_forward_and_backward_for_channels_last_images() -> None:
    """Inductor generates the fused kernels (C++ here, Triton on GPU); the backward once tripped on replicate pad."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 9, 16, 24, generator=g) * 3).to(memory_format=torch.channels_last).requires_grad_()
    image = torch.rand(2, 3, 16, 24, generator=g).to(memory_format=torch.channels_last).requires_grad_()

    def filtered(lg: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        return fast.softmax_filter(lg, fast.kernel_taps(im))

    eager = filtered(logits, image)
    compiled = torch.compile(filtered, dynamic=False)(logits, image)
    assert _rel(compiled, eager) < 1e-6
    grads = [torch.autograd.grad(out.square().sum(), (logits, image)) for out in (eager, compiled)]
    assert all(_rel(c, e) < 1e-5 for e, c in zip(*grads))
    # The fused form is the model's normalize-then-apply kernel filter, replicate borders included.
    weights = torch.softmax(logits, dim=1)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1), mode="replicate")
    taps = [padded[..., dy:dy + 16, dx:dx + 24] for dy in range(3) for dx in range(3)]
    assert _rel(eager, sum(weights[:, k:k + 1] * t for k, t in enumerate(taps))) < 1e-6


def test_optimized_inference_model_matches_the_plain_one() -> None:
    model = _model().eval()
    seq = _sequence()
    with torch.no_grad():
        plain = model(seq["color"], seq["motion"], seq["history_valid"])
        fused = fast.fuse_filter(copy.deepcopy(model))
        assert _rel(fused(seq["color"], seq["motion"], seq["history_valid"]), plain) < 1e-5
        folded = fast.fold_batch_norms(fused)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert _rel(folded(seq["color"], seq["motion"], seq["history_valid"]), plain) < 1e-5
        folded = folded.to(memory_format=torch.channels_last)
        color, motion = fast.channels_last_frames(seq["color"]), fast.channels_last_frames(seq["motion"])
        assert color[:, 1].float().is_contiguous(memory_format=torch.channels_last) and torch.equal(color, seq["color"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = folded(color, motion, seq["history_valid"])
    assert half.dtype == torch.float32 and 0 < _rel(half, plain) < 2e-2  # bf16 convs: close, not identical


class _OpRecorder(TorchDispatchMode):
    """Names of the aten ops that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_recurrent_frame_builds_no_tensor_from_host_values_and_matches_the_plain_model() -> None:
    """A tensor made from host values (``torch.tensor``, ``new_tensor``: ``aten.lift_fresh``) is a host-to-device
    copy on a GPU, which a CUDA graph cannot capture; warp and step must compute from Python scalars instead."""
    model = _model().eval()
    optimized = fast.fold_batch_norms(fast.fuse_filter(copy.deepcopy(model)))
    g = torch.Generator().manual_seed(2)
    color, previous = torch.rand(1, 3, 32, 32, generator=g) * 4, torch.rand(1, 3, 32, 32, generator=g) * 4
    motion = torch.randn(1, 2, 32, 32, generator=g) * 5
    with torch.no_grad():
        with _OpRecorder() as recorder:
            out = fast.frame_step(optimized, color, motion, previous)
        expected = model.step(color, warp(previous, motion))
    assert "aten.grid_sampler_2d.default" in recorder.ops  # the recorder sees the warp ...
    assert not any(op.startswith("aten.lift_fresh") for op in recorder.ops)  # ... and no host-built tensor
    assert _rel(out, expected) < 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_step_is_one_graph_for_all_steps_with_the_eager_numbers(channels_last: bool) -> None:
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> callable:
        graphs.append(gm)
        return gm.forward  # run the captured graph as is: the test is about tracing, not code generation

    model, seq = _model(), _sequence()
    plain = copy.deepcopy(model)
    compiled = fast.compile_step(fast.fuse_filter(model), backend=counting_backend)
    color, motion = seq["color"], seq["motion"]
    if channels_last:
        compiled = compiled.to(memory_format=torch.channels_last)
        color, motion = fast.channels_last_frames(color), fast.channels_last_frames(motion)
    out = compiled(color, motion, seq["history_valid"])
    expected = plain(seq["color"], seq["motion"], seq["history_valid"])
    assert len(graphs) == 1 and _rel(out, expected) < 1e-5
    out.sum().backward()
    expected.sum().backward()
    first = plain.extractor.first.conv.weight.grad
    assert _rel(compiled.extractor.first.conv.weight.grad, first) < 1e-3  # float32 through 4 recurrent steps
    with torch.no_grad():  # grad mode is part of the graph: inference compiles its own, once
        compiled(color, motion, seq["history_valid"])
    assert len(graphs) == 2


def test_train_step_accumulates_micro_batches_like_one_batch() -> None:
    seq = _sequence(b=2, t=3)
    halves = [{k: v[i:i + 1] for k, v in seq.items()} for i in range(2)]
    params = []
    for batches in ([seq], halves):
        model = _model("intel-sample")  # no batch norm: statistics do not depend on the micro-batch size
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        terms = fast.train_step_terms(model, optimizer, batches, LossSpec("log1p"), None)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert not any(t.requires_grad for t in terms.values())
    before = torch.cat([p.detach().flatten() for p in _model("intel-sample").parameters()])
    expected = qwnet_loss(_model("intel-sample")(seq["color"], seq["motion"], seq["history_valid"]), seq["reference"],
                          seq["motion"], seq["history_valid"], LossSpec("log1p"), color=seq["color"],
                          warp_padding="zeros")
    assert terms.keys() == expected.keys() and all(abs(float(terms[k] - expected[k].detach())) < 1e-5 for k in expected)
    assert (params[0] - before).abs().max() > 1e-4  # the step moved the weights ...
    assert (params[0] - params[1]).abs().max() < 1e-5  # ... identically with two micro-batches of one block


def test_device_prefetcher_passes_batches_through_in_order_with_channels_last_frames() -> None:
    batches = [_sequence(b=1, t=2, seed=s) | {"index": torch.tensor([s])} for s in range(3)]
    out = list(fast.DevicePrefetcher(batches, torch.device("cpu"), channels_last=True))
    assert [int(b["index"]) for b in out] == [0, 1, 2]
    for got, want in zip(out, batches):
        assert torch.equal(got["color"], want["color"]) and torch.equal(got["history_valid"], want["history_valid"])
        assert got["motion"][:, 0].float().is_contiguous(memory_format=torch.channels_last)


def test_int8_model_equals_the_integer_reference_bit_for_bit(tmp_path: Path) -> None:
    model = _model()
    cfg = load_config("paper")
    qmodel = quantize_model(model, QuantConfig(), clips={"extractor.encoder.0.0.conv": 3.0})
    write_qwq(tmp_path / "m.qwq", exported_model(qmodel, cfg))
    reference, _ = load_integer_model(tmp_path / "m.qwq")
    int8 = fast.int8_model(reference)
    convs = [m for m in int8.modules() if isinstance(m, fast.Int8Conv)]
    assert len(convs) == sum(isinstance(m, IntegerConv) for m in reference.modules()) > 0
    assert not any(isinstance(m, IntegerConv) for m in int8.modules())
    assert convs[0].offset == 128 and all(c.offset == 0 for c in convs[1:])  # 8-bit unsigned input is shifted
    assert all(c.weight.dtype == torch.int8 and c.weight.shape[1] % 8 == 0 for c in convs)
    seq = _sequence(b=1, t=3, h=32, w=64)  # bottleneck 2×4: fewer GEMM rows than _int_mm takes, padded
    with torch.no_grad():
        expected = reference(seq["color"], seq["motion"], seq["history_valid"])
        assert torch.equal(int8(seq["color"], seq["motion"], seq["history_valid"]), expected)
        assert torch.equal(qmodel(seq["color"], seq["motion"], seq["history_valid"]), expected)
