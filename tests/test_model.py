"""QW-Net model, warp, HDR transforms, augmentation and the model-stats counter."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from train_helpers import synthetic_block

from qw.cli import main
from qw.training.config import load_config
from qw.training.data import augment, flip, rotate90
from qw.training.model.hdr import TRANSFORMS, compress
from qw.training.model.qwnet import ConvBNAct, QWNet, filter_pyramid, normalize_weights, predictor_outputs
from qw.training.model.stats import model_stats
from qw.training.model.warp import warp


def _randomize_predictors(model: QWNet, scale: float = 3.0) -> None:
    """Make the predicted kernels far from uniform, so normalization is tested on uneven weights."""
    torch.manual_seed(1)
    for conv in model.filter.predictors:
        nn.init.normal_(conv.weight, std=scale)
        nn.init.normal_(conv.bias, std=scale)


@pytest.mark.parametrize("preset", ["paper", "intel-sample"])
@pytest.mark.parametrize("size", [(16, 16), (32, 48), (64, 32)])
def test_forward_shapes(preset: str, size: tuple[int, int]) -> None:
    model = QWNet(load_config(preset).model).eval()
    h, w = size
    color, motion = torch.rand(2, 3, 3, h, w), torch.randn(2, 3, 2, h, w)
    valid = torch.tensor([[False, True, True], [False, False, True]])
    out = model(color, motion, valid)
    assert out.shape == (2, 3, 3, h, w) and out.dtype == torch.float32
    features = model.extractor(torch.rand(1, 10 if preset == "paper" else 6, h, w))
    assert [f.shape[1:] for f in features] == [(c, h >> s, w >> s) for s, c in enumerate(model.cfg.widths)]


def test_sizes_not_divisible_by_16_are_padded_by_forward_and_refused_by_step() -> None:
    model = QWNet(load_config("intel-sample").model).eval()
    out = model(torch.rand(1, 2, 3, 50, 37), torch.zeros(1, 2, 2, 50, 37), torch.tensor([[False, True]]))
    assert out.shape == (1, 2, 3, 50, 37)
    with pytest.raises(ValueError, match="divisible by 16"):
        model.step(torch.rand(1, 3, 50, 37), torch.rand(1, 3, 50, 37))


def test_extractor_is_built_from_conv_bn_act_units_with_an_identifiable_first_conv() -> None:
    for preset, bn, act in (("paper", nn.BatchNorm2d, nn.ELU), ("intel-sample", nn.Identity, nn.ReLU)):
        model = QWNet(load_config(preset).model)
        units = [m for m in model.extractor.modules() if isinstance(m, ConvBNAct)]
        convs = [m for m in model.extractor.modules() if isinstance(m, nn.Conv2d)]
        assert len(units) == len(convs) and all(isinstance(u.bn, bn) and isinstance(u.act, act) for u in units)
        assert model.extractor.first is units[0] and model.extractor.first.conv.in_channels == (
            10 if preset == "paper" else 6)
        assert [p.out_channels for p in model.filter.predictors] == [28, 19, 19, 19, 9]


def test_softmax_weights_are_normalized_per_kernel_group() -> None:
    raw = [torch.randn(2, c, 8 >> s, 8 >> s) * 5 for s, c in enumerate(predictor_outputs(4))]
    weights = normalize_weights(raw)
    assert [w[0].shape[1] for w in weights] == [18, 9, 9, 9] and weights[-1][1] is None
    for first, up in weights:
        assert torch.allclose(first.sum(1), torch.ones(()), atol=1e-6) and first.min() >= 0
        if up is not None:
            assert up.shape[1] == 10 and torch.allclose(up.sum(1), torch.ones(()), atol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "intel-sample"])
def test_constant_image_passes_through_the_filter_network_unchanged(preset: str) -> None:
    # With replicated kernel borders; zero padding (the public sample's, in intel-sample) reads black outside.
    model = QWNet(load_config(preset).model.model_copy(update={"kernel_padding": "replicate"})).eval()
    _randomize_predictors(model)
    constant = torch.tensor([0.3, 2.0, 75.0]).view(1, 3, 1, 1).expand(2, 3, 32, 48).contiguous()
    out = model.step(constant, constant)
    assert torch.allclose(out, constant, rtol=1e-5)
    zero_padded = copy.deepcopy(model)
    zero_padded.filter.padding = "zeros"
    border = zero_padded.step(constant, constant)
    assert (border[..., 0, :] < constant[..., 0, :]).all()  # every top-row pixel mixes in zeros
    # ...while a non-constant image is really filtered (the test above cannot pass by an identity network).
    noisy = constant * (1 + 0.5 * torch.rand_like(constant))
    assert not torch.allclose(model.step(noisy, noisy), noisy, rtol=1e-3)


def test_five_by_five_input_kernels_reach_two_pixels_and_start_as_pass_through() -> None:
    cfg = load_config("paper").model.model_copy(update={"input_kernel": 5})
    model = QWNet(cfg)
    assert [p.out_channels for p in model.filter.predictors] == [60, 19, 19, 19, 9]
    # all full-resolution weight on the colour tap two rows up and two columns left: a (2, 2) shift, exact
    logits = torch.full((1, 60, 16, 16), -1e4)
    logits[:, 0] = 1e4
    weights = normalize_weights([logits], input_kernel=5)[0][0]
    assert weights.shape[1] == 50
    image = torch.rand(1, 3, 16, 16)
    out = filter_pyramid([logits[:, :50]], image, torch.zeros_like(image), input_kernel=5)
    assert torch.equal(out[..., 2:, 2:], image[..., :-2, :-2])
    # the untrained filter favours the centre of the colour kernel (tap 12 of 25) as much as the 3×3 one does
    def centre_share(k: int) -> float:
        bias = QWNet(cfg.model_copy(update={"input_kernel": k})).filter.predictors[0].bias.detach()
        weights = torch.softmax(bias[:2 * k * k], 0)
        assert int(weights.argmax()) == k * k // 2
        return float(weights.max())
    assert 0.45 < centre_share(3) < 0.65 and abs(centre_share(5) - centre_share(3)) < 0.08


@pytest.mark.parametrize("input_kernel", [3, 5])
def test_filter_output_is_a_convex_combination_of_input_and_history(input_kernel: int) -> None:
    raw = [torch.randn(1, c, 32 >> s, 32 >> s) * 4 for s, c in enumerate(predictor_outputs(3, input_kernel))]
    color, history = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) + 1
    out = filter_pyramid(raw, color, history, input_kernel=input_kernel)
    assert out.min() >= color.min() - 1e-6 and out.max() <= history.max() + 1e-6


def _vertical_edge() -> torch.Tensor:
    """(1,3,16,16): 0 on the left half, 1 on the right."""
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1.0
    return edge


def test_a_negative_lobe_lets_the_input_kernels_sharpen() -> None:
    lobe, n = 1.0, 18
    raw = [torch.randn(2, c, 8 >> s, 8 >> s) * 5 for s, c in enumerate(predictor_outputs(4))]
    plain, wide = normalize_weights(raw), normalize_weights(raw, lobe=lobe)
    convex, widened = plain[0][0], wide[0][0]
    assert torch.allclose(widened.sum(1), torch.ones(()), atol=1e-6)
    assert torch.allclose(widened, (1 + lobe) * convex - lobe / n)
    assert widened.min() < 0 and widened.min() >= -lobe / n - 1e-7
    assert torch.equal(wide[1][0], plain[1][0])  # full resolution only
    # all weight on the history's centre tap: an unsharp mask, 2·h − the mean of the 18 taps: it overshoots edges
    logits = torch.full((1, 28, 16, 16), -1e4)
    logits[:, 9 + 4] = 1e4
    edge = _vertical_edge()
    out = filter_pyramid([logits[:, :18]], edge, edge, lobe=lobe)
    assert out.max() == pytest.approx(1 + 6 / 18) and out.min() == pytest.approx(-6 / 18)


def test_a_model_with_a_negative_lobe_starts_as_the_convex_one_and_outputs_no_negative_radiance() -> None:
    lobe = 1.0
    cfg = load_config("paper").model
    with pytest.raises(ValueError, match="input_kernel_lobe"):  # λ < 0 would pull every kernel toward a box
        cfg.model_validate({**cfg.model_dump(), "input_kernel_lobe": -0.5})
    biases = []
    for c in (cfg, cfg.model_copy(update={"input_kernel_lobe": lobe})):
        torch.manual_seed(0)
        model = QWNet(c).eval()
        bias = [p.bias.detach()[None, :, None, None] for p in model.filter.predictors]
        biases.append(normalize_weights(bias, lobe=c.input_kernel_lobe)[0][0])
    assert torch.allclose(*biases, atol=1e-6)
    # the unsharp kernel above, and the output taken from the full-resolution result: the filter undershoots 0
    edge = _vertical_edge()
    with torch.no_grad():
        model.filter.predictors[0].weight.zero_()
        model.filter.predictors[0].bias.fill_(-30.0)
        model.filter.predictors[0].bias[9 + 4] = model.filter.predictors[0].bias[-1] = 30.0
        assert model.filter(model.extractor(torch.rand(1, 10, 16, 16)), edge, edge).min() < 0
        assert model.step(edge, edge).min() == 0


def test_warp_with_zero_motion_is_identity() -> None:
    image = torch.rand(2, 3, 17, 23)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 17, 23)), image, rtol=0, atol=1e-6)


def test_warp_with_integer_motion_is_an_exact_shift_in_the_contract_direction() -> None:
    image = torch.rand(1, 3, 20, 24)
    motion = torch.zeros(1, 2, 20, 24)
    motion[:, 0], motion[:, 1] = 2.0, -3.0  # moved 2 px right and 3 px up since the previous frame
    out = warp(image, motion)
    # current p = (x, y) samples previous at p − m = (x − 2, y + 3); exact up to the float32 rounding of the
    # normalized sampling grid (bilinear weights of ~1e-6 on the neighbours)
    assert torch.allclose(out[..., :17, 2:], image[..., 3:, :-2], atol=1e-5)
    assert not torch.allclose(out[..., :17, 2:], image[..., :17, 2:])


def test_warp_with_half_pixel_motion_averages_neighbours() -> None:
    image = torch.rand(1, 1, 8, 8)
    motion = torch.zeros(1, 2, 8, 8)
    motion[:, 0] = 0.5
    out = warp(image, motion)
    assert torch.allclose(out[..., 1:], 0.5 * (image[..., 1:] + image[..., :-1]), atol=1e-6)


def _shifted_cosine(shift: float, size: int = 32, period: float = 4.0) -> torch.Tensor:
    """(1,1,size,size) cos(2π(x + ½ − shift)/period) over pixel centres: a pattern moved `shift` px right."""
    x = torch.arange(size, dtype=torch.float64) + 0.5 - shift
    return torch.cos(2 * torch.pi * x / period).float().expand(1, 1, size, size).contiguous()


def test_bicubic_warp_keeps_detail_that_bilinear_blurs() -> None:
    # a 4-px period pattern moved half a pixel: the exact history is the shifted pattern; bilinear halves its
    # contrast-carrying neighbours into an average (amplitude cos(π/4) ≈ 0.71), the cubic filter keeps more
    image, motion = _shifted_cosine(0.0), torch.zeros(1, 2, 32, 32)
    motion[:, 0] = 0.5
    truth = _shifted_cosine(0.5)[..., 4:-4]
    errors = {f: (warp(image, motion, resample=f)[..., 4:-4] - truth).abs().max().item() for f in ("bilinear", "bicubic")}
    assert errors["bilinear"] > 0.25 and errors["bicubic"] < 0.5 * errors["bilinear"]
    assert torch.allclose(warp(image, torch.zeros_like(motion), resample="bicubic"), image, atol=1e-5)


def test_bicubic_history_of_an_edge_is_never_negative() -> None:
    # the cubic filter undershoots next to an edge; radiance cannot be negative, so the model clamps its history
    cfg = load_config("paper").model.model_copy(update={"warp_filter": "bicubic"})
    previous = torch.zeros(1, 3, 16, 16)
    previous[..., 8:] = 10.0
    motion = torch.zeros(1, 2, 16, 16)
    motion[:, 0] = 0.5
    assert warp(previous, motion, resample="bicubic").min() < -0.1
    history = QWNet(cfg).warp_history(previous, motion)
    assert history.min() == 0.0 and history[..., 10:].min() > 9.9


def _warp_error(block: dict[str, np.ndarray]) -> float:
    ref = torch.from_numpy(block["reference"].astype(np.float32))
    motion = torch.from_numpy(block["motion"].astype(np.float32))
    predicted = warp(ref[:-1], motion[1:])
    return float((predicted - ref[1:])[..., 4:-4, 4:-4].abs().mean())  # borders see outside the frame


def test_augmentation_keeps_motion_consistent_with_the_images() -> None:
    rng = np.random.default_rng(3)
    block = synthetic_block(rng, t=3, tile=48)
    base = _warp_error(block)
    wrong_motion = {**block, "motion": -block["motion"]}
    assert _warp_error(wrong_motion) > 10 * base  # the measure is sensitive to a wrong vector field
    transforms = [lambda b: flip(b, -1), lambda b: flip(b, -2), rotate90, lambda b: rotate90(rotate90(rotate90(b)))]
    for transform in transforms:
        out = transform(block)
        assert _warp_error(out) < 1.5 * base + 1e-3
        assert _warp_error({**out, "motion": block["motion"]}) > 10 * base  # untransformed vectors would be wrong
    for seed in range(6):
        out = augment(block, np.random.default_rng(seed), (0.5, 2.0))
        scale = float(out["reference"].mean() / block["reference"].mean())
        assert 0.5 <= scale <= 2.0 and np.allclose(out["color"].mean() / block["color"].mean(), scale, rtol=1e-2)
        assert _warp_error(out) < 2.5 * base * scale + 1e-3


def test_hdr_transforms_are_monotone_and_bounded_where_expected() -> None:
    x = torch.tensor([0.0, 0.01, 0.5, 1.0, 10.0, 1000.0])
    for name in TRANSFORMS:
        y = compress(x, name)
        assert y[0] >= 0 and bool((y[1:] > y[:-1]).all()) and bool(torch.isfinite(y).all()), name
    assert compress(x, "reinhard").max() < 1 and compress(x, "pq").max() <= 1
    assert compress(torch.tensor([-1.0]), "log1p") == 0


# ---------------------------------------------------------------------------------------------- model stats


def test_model_stats_matches_a_hand_count_for_a_small_config() -> None:
    cfg = load_config("intel-sample", {"model": {"widths": [4, 6, 8], "decoder_convs": [2, 1]}})
    stats = model_stats(cfg, height=16, width=32)
    full, half, quarter = 16 * 32, 8 * 16, 4 * 8
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    params = (
        conv(6, 4, 3) + 4 + conv(4, 4, 3) + 4 + conv(4, 6, 3) + 6 + conv(6, 6, 3) + 6 + conv(6, 8, 3) + 8
        + conv(8, 8, 3) + 8  # encoder
        + conv(14, 6, 1) + 6 + conv(6, 6, 3) + 6 + conv(10, 4, 1) + 4 + 2 * (conv(4, 4, 3) + 4)  # decoder
        + conv(4, 28, 1) + 28 + conv(6, 19, 1) + 19 + conv(8, 9, 1) + 9  # predictors
    )
    first = conv(6, 4, 3) * full
    four_bit = ((conv(4, 4, 3) + conv(10, 4, 1) + 2 * conv(4, 4, 3)) * full
                + (conv(4, 6, 3) + conv(6, 6, 3) + conv(14, 6, 1) + conv(6, 6, 3)) * half
                + (conv(6, 8, 3) + conv(8, 8, 3)) * quarter)
    predictors = conv(4, 28, 1) * full + conv(6, 19, 1) * half + conv(8, 9, 1) * quarter
    kernels = 3 * (28 * full + 19 * half + 9 * quarter)
    assert stats.params == params
    assert stats.conv_macs == first + four_bit + predictors
    assert stats.macs == first + four_bit + predictors + kernels
    shares = stats.share_by_precision()
    assert shares["4-bit"] == pytest.approx(four_bit / stats.macs)
    assert shares["8-bit"] == pytest.approx((first + predictors) / stats.macs)
    assert shares["float"] == pytest.approx(kernels / stats.macs)


def test_model_stats_reproduces_the_public_sample_cost() -> None:
    stats = model_stats(load_config("intel-sample"), 1080, 1920)
    assert (stats.height, stats.width) == (1088, 1920)
    assert stats.params == sum(p.numel() for p in QWNet(load_config("intel-sample").model).parameters())
    assert abs(stats.params / 1.244e6 - 1) < 0.001
    assert abs(stats.conv_macs / 173.6e9 - 1) < 0.01
    assert stats.share_by_precision()["4-bit"] == pytest.approx(0.962, abs=0.001)
    paper = model_stats(load_config("paper"), 1080, 1920)
    assert paper.share_by_precision()["4-bit"] == pytest.approx(0.94, abs=0.005)


def test_model_stats_bit_widths_come_from_the_config() -> None:
    cfg = load_config("intel-sample", {"quant": {"extractor_weight_bits": 8, "extractor_act_bits": 8}})
    assert model_stats(cfg, 64, 64).share_by_precision().get("4-bit", 0) == 0


def test_model_stats_cli_prints_the_breakdown() -> None:
    result = CliRunner().invoke(main, ["model-stats", "--config", "intel-sample", "--resolution", "1920x1080"])
    assert result.exit_code == 0, result.output
    assert "1,244,158" in result.output and "173.60 G in convolutions" in result.output
    assert "extractor.encoder.0.0.conv" in result.output and "4-bit 96.2%" in result.output
    bad = CliRunner().invoke(main, ["model-stats", "--config", "nonexistent.yaml"])
    assert bad.exit_code == 2 and "nonexistent.yaml" in bad.output


def test_jitter_input_is_two_constant_channels_the_model_needs_and_uses() -> None:
    cfg = load_config("paper", {"model": {"widths": [8, 8, 8, 8, 8], "jitter_input": True}}).model
    torch.manual_seed(0)
    model = QWNet(cfg).eval()
    assert model.extractor.first.conv.in_channels == 12
    color, history = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    seen = []
    model.extractor.first.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    jitter = torch.tensor([[0.25, -0.5], [0.0, 0.5]])
    with torch.no_grad():
        out = model.step(color, history, jitter)
        other = model.step(color, history, -jitter)
    planes = seen[0][:, -2:]
    assert torch.equal(planes, (jitter + 0.5)[:, :, None, None].expand(-1, -1, 16, 16))  # in [0, 1], like colour
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="jitter"):
        model.step(color, history)
    seq = model(torch.rand(1, 2, 3, 16, 16), torch.zeros(1, 2, 2, 16, 16), torch.tensor([[False, True]]),
                torch.rand(1, 2, 2) - 0.5)
    assert seq.shape == (1, 2, 3, 16, 16)


def test_augmentation_transforms_the_jitter_like_a_constant_motion_vector() -> None:
    rng = np.random.default_rng(5)
    block = synthetic_block(rng, t=3, tile=16)
    jitter = rng.uniform(-0.5, 0.5, (3, 2)).astype(np.float32)
    block = {**block, "jitter": jitter, "motion": np.broadcast_to(jitter[:, :, None, None], (3, 2, 16, 16)).copy()}
    for transform in (lambda b: flip(b, -1), lambda b: flip(b, -2), rotate90):
        out = transform(block)
        np.testing.assert_array_equal(out["jitter"], out["motion"][:, :, 0, 0])  # offsets turn with the image
        assert not np.array_equal(out["jitter"], jitter)
    np.testing.assert_array_equal(flip(block, -1)["jitter"], jitter * [-1, 1])
    np.testing.assert_array_equal(block["jitter"], jitter)  # the input block is not modified


def test_norm_options_build_their_layers() -> None:
    def units(**model):
        cfg = load_config("paper", {"model": {"widths": [8, 20, 8, 8, 8], **model}}).model
        return [m for m in QWNet(cfg).extractor.modules() if isinstance(m, ConvBNAct)]

    group = units(norm="group")
    assert all(isinstance(u.bn, nn.GroupNorm) for u in group)
    assert {(u.bn.num_channels, u.bn.num_groups) for u in group} == {(8, 8), (20, 5)}  # largest divisor ≤ 8
    assert all(u.conv.bias is None for u in group)
    assert all(isinstance(u.bn, nn.Identity) and u.conv.bias is not None for u in units(norm="none"))
    assert {u.bn.momentum for u in units(bn_momentum=0.01)} == {0.01}
    assert {u.bn.momentum for u in units(bn_momentum=None)} == {None}  # cumulative average
    assert {u.bn.momentum for u in units()} == {0.1}  # torch's default stays the paper preset's
