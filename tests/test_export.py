"""Integer export (.qwq) and the integer reference implementation, down to a bit-exact check on real frames."""

import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from train_helpers import small_shot, write_checkpoint

from qw.cli import main
from qw.datagen.errors import QwError
from qw.training.export import integer_ref, qwq
from qw.training.quantization import fake_quant as quant
from qw.training.config import Config, ModelConfig
from qw.training.infer import frame_range, input_frames
from qw.datagen.capture_format import load_meta
from qw.training.model.qwnet import QWNet

SMALL = ModelConfig(widths=[8, 12, 16, 20, 24], decoder_convs=[1, 1, 1, 1])


def test_int4_packing_round_trip_and_nibble_order():
    values = np.array([1, -1, 7, -8, 0, 5, -3], np.int8)  # odd count: the last byte is half padding
    packed = qwq.pack_int4(values)
    assert packed == bytes([0xF1, 0x87, 0x50, 0x0D])  # element 2i in the low nibble; -1 = 0xF, -8 = 0x8
    np.testing.assert_array_equal(qwq.unpack_int4(packed, len(values)), values)
    every = np.arange(-8, 8, dtype=np.int8).repeat(3)
    np.testing.assert_array_equal(qwq.unpack_int4(qwq.pack_int4(every), every.size), every)
    with pytest.raises(ValueError):
        qwq.pack_int4(np.array([8]))


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> QWNet:
    """A QWNet with non-trivial batch-norm statistics (so folding matters)."""
    torch.manual_seed(seed)
    model = QWNet(cfg).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.3, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def qat_model(model: QWNet, bits: str, color: torch.Tensor) -> nn.Module:
    seq = [{"color": color, "motion": torch.zeros(*color.shape[:2], 2, *color.shape[-2:]),
            "history_valid": torch.zeros(color.shape[:2], dtype=torch.bool)}]
    plan = quant.QUANT_PRESETS[bits]
    return quant.quantize_model(model, plan, quant.calibrate_clips(model, quant.quant_sites(model, plan), seq))


def test_qwq_round_trip_preserves_codes_scales_and_bits(tmp_path):
    model = perturbed_model(SMALL)
    sizes = {}
    for bits in ("w4a4", "w8a8"):
        qmodel = qat_model(model, bits, torch.rand(1, 1, 3, 32, 32) * 4)
        cfg = Config(model=SMALL, quant=quant.QUANT_PRESETS[bits])
        written = qwq.exported_model(qmodel, cfg)
        path = tmp_path / f"{bits}.qwq"
        qwq.write_qwq(path, written)
        sizes[bits] = path.stat().st_size
        read = qwq.read_qwq(path)
        assert Config.model_validate(read.config) == cfg
        assert [layer.name for layer in read.layers] == [name for name, _ in quant.quantized_convs(qmodel)]
        for a, b in zip(written.layers, read.layers):
            np.testing.assert_array_equal(a.weight, b.weight)
            for field in ("weight_scale", "bias"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert (a.weight_bits, a.input) == (b.weight_bits, b.input)
        assert list(read.activations) == list(qmodel.act_quant) == list(written.activations)
        for a, b in zip(written.activations.values(), read.activations.values()):
            assert (a.bits, a.lower, a.zero_point, a.scale) == (b.bits, b.lower, b.zero_point, b.scale)
        first = read.layers[0]
        assert first.weight_bits == 8 and read.activations[first.input].bits == 8
        assert read.activations[first.input].zero_point == 0
        assert np.abs(read.layers[1].weight).max() <= (7 if bits == "w4a4" else 127)
        refs = {h["name"]: h["weight"]["dtype"] for h in read.header["layers"]}
        assert refs["extractor.encoder.1.0.conv"] == ("int4" if bits == "w4a4" else "int8")
        assert refs["filter.predictors.0"] == "int8"
    assert sizes["w4a4"] < 0.75 * sizes["w8a8"]


def test_qwq_bytes_follow_the_documented_layout(tmp_path):
    """A reader written from docs/quantization.md alone (no qwq code) decodes what the exporter wrote."""
    import hashlib
    import json

    written = qwq.exported_model(quant.quantize_model(perturbed_model(SMALL), quant.QUANT_PRESETS["w4a4"]),
                                 Config(model=SMALL))
    path = tmp_path / "m.qwq"
    qwq.write_qwq(path, written)
    raw = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sIQ", raw)  # magic, uint32 version, uint64 header length
    assert (magic, version) == (b"QWQ\0", 2)
    header = json.loads(raw[16:16 + length].decode("utf-8"))
    start = 16 + length + -(16 + length) % 16  # zero padding to a multiple of 16
    assert set(raw[16 + length:start]) <= {0}
    data = raw[start:-32]
    assert hashlib.sha256(raw[:-32]).digest() == raw[-32:]
    assert len(data) == header["data_bytes"] and hashlib.sha256(data).hexdigest() == header["data_sha256"]

    def tensor(ref):
        assert ref["offset"] % 16 == 0
        chunk = data[ref["offset"]:ref["offset"] + ref["nbytes"]]
        if ref["dtype"] == "int4":  # two per byte, the even element in the low nibble, two's complement
            nibbles = [n for byte in chunk for n in (byte & 0xF, byte >> 4)][:int(np.prod(ref["shape"]))]
            return np.array([n - 16 if n > 7 else n for n in nibbles]).reshape(ref["shape"])
        return np.frombuffer(chunk, {"int8": "<i1", "float32": "<f4"}[ref["dtype"]]).reshape(ref["shape"])

    for entry, layer in zip(header["layers"], written.layers):
        assert entry["weight"]["dtype"] == ("int4" if layer.weight_bits == 4 else "int8")
        np.testing.assert_array_equal(tensor(entry["weight"]), layer.weight)
        np.testing.assert_array_equal(tensor(entry["weight_scale"]), layer.weight_scale)
        np.testing.assert_array_equal(tensor(entry["bias"]), layer.bias)
    for entry in header["activations"]:
        assert tensor(entry["scale"]) == written.activations[entry["name"]].scale


def test_qwq_errors_name_the_file(tmp_path):
    model = perturbed_model(SMALL)
    path = tmp_path / "m.qwq"
    qwq.write_qwq(path, qwq.exported_model(quant.quantize_model(model, quant.QUANT_PRESETS["w4a4"]),
                                                 Config(model=SMALL)))
    raw = path.read_bytes()
    bad = tmp_path / "bad.qwq"
    for data, message in ((b"PK\x03\x04" + raw[4:], r"not a \.qwq file \(bad magic\)"),
                          (raw[:4] + struct.pack("<I", 99) + raw[8:], "version 99"),
                          (raw[:4] + struct.pack("<I", 1) + raw[8:], "version 1; this qw reads version 2"),
                          (raw[:-10], "truncated or corrupt"),
                          (raw[:-1] + bytes([raw[-1] ^ 1]), "truncated or corrupt"),
                          (raw.replace(b'"zero_point": 0', b'"zero_point": 1', 1), "truncated or corrupt")):
        bad.write_bytes(data)
        with pytest.raises(QwError, match=message) as err:
            qwq.read_qwq(bad)
        assert str(bad) in str(err.value)
    torch.save({"model": model.state_dict()}, bad)  # a training checkpoint given where a .qwq is expected
    with pytest.raises(QwError, match="not a .qwq file but a PyTorch checkpoint.*CHECKPOINT argument.*qw export"):
        qwq.read_qwq(bad)


def test_int_conv2d_is_exact_integer_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-15, 16, (2, 5, 9, 7), generator=g, dtype=torch.int32)
    w = torch.randint(-7, 8, (4, 5, 3, 3), generator=g, dtype=torch.int32)
    out = integer_ref.int_conv2d(x, w, padding=1)
    assert out.dtype == torch.int32
    expected = nn.functional.conv2d(x.double(), w.double(), padding=1)
    assert torch.equal(out.double(), expected)
    # One output by hand: centre pixel, channel 0.
    assert out[0, 0, 4, 3].item() == int((x[0, :, 3:6, 2:5] * w[0]).sum())


@pytest.mark.parametrize("preset_model", [
    SMALL, ModelConfig(input_processing=False, norm="none", activation="relu", widths=[8, 12, 16, 20, 24],
                       decoder_convs=[2, 1, 1, 1]), SMALL.model_copy(update={"input_kernel": 5}),
    SMALL.model_copy(update={"input_kernel_lobe": 1.0})],
    ids=["paper-shape", "intel-sample-shape", "five-by-five-input-kernels", "negative-lobe"])
def test_integer_reference_equals_fake_quant_on_a_builtin_capture(tmp_path, builtin_captures, preset_model):
    shot = builtin_captures / "builtin_fence" / "rise"
    meta = load_meta(shot)
    frames = list(input_frames(shot, meta, frame_range(meta, 0, 4)))
    colors = torch.stack([c for c, _, _ in frames], 1)
    motions = torch.stack([m for _, m, _ in frames], 1)
    valid = torch.tensor([[v for _, _, v in frames]])
    model = perturbed_model(preset_model)
    qmodel = qat_model(model, "w4a4", colors[:, :2])
    path = tmp_path / "m.qwq"
    qwq.write_qwq(path, qwq.exported_model(qmodel, Config(model=preset_model)))
    integer_model, _ = integer_ref.load_integer_model(path)
    kinds = {type(m).__name__ for m in integer_model.modules()}
    assert "IntegerConv" in kinds and "Conv2d" not in kinds and "QuantConv" not in kinds
    with torch.no_grad():
        fake = qmodel(colors, motions, valid)
        real = integer_model(colors, motions, valid)
        full = model(colors, motions, valid)
    assert fake.shape == (1, 4, 3, meta.height, meta.width)
    # Same numbers to float rounding (in fact bit for bit: both accumulate exactly and round identically).
    torch.testing.assert_close(real, fake, rtol=1e-6, atol=1e-6)
    assert torch.equal(real, fake)
    # ...and quantization changed something: the check is not comparing a model with itself.
    assert (fake - full).abs().max() > 1e-4


def test_fp16_plan_exports_float16_weights_and_reloads_exactly(tmp_path):
    model = perturbed_model(SMALL)
    qmodel = quant.quantize_model(model, quant.QUANT_PRESETS["fp16"])
    path = tmp_path / "fp16.qwq"
    cfg = Config(model=SMALL, quant=quant.QUANT_PRESETS["fp16"])
    header = qwq.write_qwq(path, qwq.exported_model(qmodel, cfg))
    assert {layer["weight"]["dtype"] for layer in header["layers"]} == {"float16"}
    reloaded, _ = integer_ref.load_integer_model(path)
    assert any(isinstance(m, integer_ref.Float16Conv) for m in reloaded.modules())
    color = torch.rand(1, 2, 3, 32, 48) * 4
    motion, valid = torch.zeros(1, 2, 2, 32, 48), torch.tensor([[False, True]])
    with torch.no_grad():
        assert torch.equal(reloaded(color, motion, valid), qmodel(color, motion, valid))


def test_export_verify_feeds_a_jitter_reading_model_its_jitter(tmp_path):
    """`qw export --verify` ran the models without the frames' jitter: a `model.jitter_input` model crashed."""
    import json

    cfg = Config(model=ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1], jitter_input=True))
    checkpoint = write_checkpoint(tmp_path / "q.pt", cfg, quantized=True)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.qwq"),
                                       "--verify", str(small_shot(tmp_path / "captures")), "--verify-frames", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    verify = json.loads(result.output)["verify"]
    assert verify["frames"] == 3 and verify["bit_identical"] and verify["max_output"] > 0
