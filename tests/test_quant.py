"""Fake quantizers (levels, clipping, straight-through gradients), BN folding, and the QAT conversion of QW-Net."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from qw.training.quantization import fake_quant as quant
from qw.training.config import ModelConfig, QuantConfig, load_config
from qw.training.model.qwnet import ConvBNAct, QWNet

SMALL = ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1])


def test_weight_codes_are_symmetric_per_output_channel():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0, 3.0]).view(-1, 1, 1, 1)
    codes, scale = quant.weight_codes(w, 4)
    assert torch.equal(codes, codes.round()) and codes.abs().max() == 7
    # The largest |w| of every channel lands on ±7 exactly, so each channel has its own scale = max|w| / 7.
    torch.testing.assert_close(scale, w.abs().amax(dim=(1, 2, 3)) / 7)
    assert torch.equal(codes.abs().amax(dim=(1, 2, 3)), torch.full((5,), 7.0))
    assert ((codes * scale.view(-1, 1, 1, 1) - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()
    assert quant.weight_codes(w, 8)[0].abs().max() == 127


def test_weight_gradient_passes_straight_through():
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    codes, scale = quant.weight_codes(w, 4)
    (codes * scale.view(-1, 1, 1, 1) * torch.arange(72.0).view(4, 2, 3, 3)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(72.0).view(4, 2, 3, 3))


def test_unsigned_activation_levels_and_clipping():
    q = quant.ActQuant(4, lower=0.0, clip=1.5)
    x = torch.linspace(-1, 3, 4001)
    y = q(x)
    levels = torch.unique(y)
    assert len(levels) == 16
    torch.testing.assert_close(levels, torch.arange(16) * 0.1)
    assert y[x < 0].eq(0).all() and torch.allclose(y[x > 1.5], torch.tensor(1.5))


def test_elu_activation_range_is_asymmetric_with_exact_zero():
    q = quant.ActQuant(4, lower=-1.0, clip=2.0)
    scale, zero = q.scale_and_zero()
    assert scale.item() == pytest.approx(3.0 / 15) and zero.item() == 5  # round(1 / 0.2)
    y = q(torch.linspace(-3, 5, 8001))
    levels = torch.unique(y)
    assert len(levels) == 16
    assert levels.min().item() == pytest.approx(-1.0) and levels.max().item() == pytest.approx(2.0)
    assert q(torch.zeros(3)).eq(0).all()
    # An unsigned quantizer would have thrown away everything ELU puts below zero.
    assert quant.ActQuant(4, lower=0.0, clip=2.0)(torch.tensor([-0.8])).item() == 0.0
    assert q(torch.tensor([-0.8])).item() == pytest.approx(-0.8)


def test_activation_gradients_straight_through_inside_and_to_the_clip_outside():
    q = quant.ActQuant(4, lower=0.0, clip=1.0)
    x = torch.tensor([0.33, 0.71, 1.8, -0.4], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    # d(clip)/d(log_clip) = clip: a clipped value pulls the clip up by exactly that (LSQ/PACT-style).
    q2 = quant.ActQuant(4, lower=0.0, clip=1.0)
    q2(torch.tensor([1.8])).sum().backward()
    assert q2.log_clip.grad.item() == pytest.approx(1.0)


def test_fold_batch_norm_equals_conv_then_bn():
    torch.manual_seed(1)
    unit = ConvBNAct(6, 10, 3, "batch", "elu")
    unit.bn.running_mean.uniform_(-1, 1)
    unit.bn.running_var.uniform_(0.2, 3)
    nn.init.uniform_(unit.bn.weight, 0.5, 2)
    nn.init.uniform_(unit.bn.bias, -1, 1)
    unit.eval()
    x = torch.randn(2, 6, 9, 11)
    folded = quant.fold_batch_norm(unit.conv, unit.bn)
    torch.testing.assert_close(unit.act(folded(x)), unit(x), rtol=1e-5, atol=1e-5)


def test_quant_conv_integer_path_equals_float_fake_quant():
    torch.manual_seed(2)
    conv = nn.Conv2d(7, 5, 3, padding=1)
    qc = quant.QuantConv(conv, 4, quant.ActQuant(4, -1.0, 2.5))
    x = torch.randn(1, 7, 12, 10) * 2
    w_codes, w_scale = qc.quantized_weight()
    expected = nn.functional.conv2d(qc.input_quant(x), w_codes * w_scale.view(-1, 1, 1, 1), qc.bias, padding=1)
    torch.testing.assert_close(qc(x), expected, rtol=1e-5, atol=1e-5)


def test_quantize_model_follows_the_plan():
    torch.manual_seed(3)
    model = QWNet(SMALL).eval()
    qmodel = quant.quantize_model(model, QuantConfig())
    convs = dict(quant.quantized_convs(qmodel))
    n_units = sum(isinstance(m, ConvBNAct) for m in model.modules())
    assert len(convs) == n_units + len(model.filter.predictors)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())
    first = convs["extractor.encoder.0.0.conv"]
    assert (first.weight_bits, first.input_quant.bits, first.input_quant.lower) == (8, 8, 0.0)
    inner = convs["extractor.decoder.0.0.conv"]
    assert (inner.weight_bits, inner.input_quant.bits, inner.input_quant.lower) == (4, 4, -1.0)
    pred = convs["filter.predictors.1"]
    assert (pred.weight_bits, pred.input_quant.bits) == (8, 4)
    assert isinstance(model.extractor.first.bn, nn.BatchNorm2d)  # the float model is untouched


def test_one_quantizer_per_tensor_shared_by_every_conv_that_reads_it():
    model = QWNet(load_config("intel-sample").model)
    qmodel = quant.quantize_model(model, QuantConfig())
    convs = dict(quant.quantized_convs(qmodel))
    assert len(convs) == 24 and len(qmodel.act_quant) == 16  # the public sample's 16 quantizers for its 24 convs
    # Encoder 1 reads encoder 0's output pooled, decoder 0 reads it concatenated with encoder 1's features, and
    # predictor 1 reads those features: one tensor pair, one scale.
    shared = qmodel.act_quant["concat0"]
    for name in ("extractor.encoder.1.0.conv", "extractor.decoder.0.0.conv", "filter.predictors.1"):
        assert convs[name].input_quant is shared
    assert convs["extractor.decoder.1.1.conv"].input_quant is qmodel.act_quant["decoder1_0"]
    owners = {id(q) for q in qmodel.act_quant.values()}
    assert {id(c.input_quant) for c in convs.values()} == owners  # every tensor read, none twice-scaled
    clips = [k for k in qmodel.state_dict() if k.endswith("log_clip")]
    assert clips == [f"act_quant.{t}.log_clip" for t in qmodel.act_quant]  # one parameter per scale, one name
    moved = copy.deepcopy(qmodel)
    assert moved.extractor.encoder[1][0].conv.input_quant is moved.act_quant["concat0"]  # sharing survives copies


def test_eight_bit_model_tracks_float_model_and_fp16_is_closer():
    torch.manual_seed(4)
    model = QWNet(SMALL).eval()
    color = torch.rand(1, 3, 32, 32) * 3
    history = color
    calib = [{"color": color[:, None], "motion": torch.zeros(1, 1, 2, 32, 32),
              "history_valid": torch.zeros(1, 1, dtype=torch.bool)}]
    sites = quant.quant_sites(model, QuantConfig())
    clips = quant.calibrate_clips(model, sites, calib)
    assert all(math.isfinite(c) and c > 0 for c in clips.values())
    with torch.no_grad():
        ref = model.step(color, history)
        err8 = (quant.quantize_model(model, quant.QUANT_PRESETS["w8a8"], clips).step(color, history) - ref).abs().mean()
        err4 = (quant.quantize_model(model, quant.QUANT_PRESETS["w4a4"], clips).step(color, history) - ref).abs().mean()
        err16 = (quant.quantize_model(model, quant.QUANT_PRESETS["fp16"]).step(color, history) - ref).abs().mean()
    assert err16 < err8 < err4 < 0.5 * ref.abs().mean()


def test_norm_none_with_jitter_input_calibrates_and_quantizes_and_group_norm_is_refused():
    from qw.training.config import load_config

    cfg = load_config("paper", {"model": {"widths": [8, 8, 8, 8, 8], "norm": "none", "jitter_input": True}})
    torch.manual_seed(0)
    model = QWNet(cfg.model).eval()
    seq = {"color": torch.rand(1, 2, 3, 16, 16), "motion": torch.zeros(1, 2, 2, 16, 16),
           "history_valid": torch.tensor([[False, True]]), "jitter": torch.rand(1, 2, 2) - 0.5}
    sites = quant.quant_sites(model, QuantConfig())
    clips = quant.calibrate_clips(model, sites, [seq])
    qmodel = quant.quantize_model(model, QuantConfig(), clips)
    first = dict(quant.quantized_convs(qmodel))["extractor.encoder.0.0.conv"]
    assert first.weight.shape[1] == 12 and first.input_quant.lower == 0.0  # jitter + 0.5 >= 0: the unsigned input range
    with torch.no_grad():
        out, ref = qmodel(seq["color"], seq["motion"], seq["history_valid"], seq["jitter"]), model(
            seq["color"], seq["motion"], seq["history_valid"], seq["jitter"])
    assert (out - ref).abs().mean() < 0.1 * ref.abs().mean()
    group = QWNet(load_config("paper", {"model": {"widths": [8, 8, 8, 8, 8], "norm": "group"}}).model)
    with pytest.raises(ValueError, match="GroupNorm"):
        quant.quantize_model(group, QuantConfig())
