"""`qw export --format onnx`: the float step against PyTorch and the QDQ step against the integer reference, both
run by ONNX Runtime on a captured shot; the graph's types, scales and zero points are the plan's."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from train_helpers import write_checkpoint

from qw.cli import main
from qw.training.config import Config, ModelConfig
from qw.training.quantization.qat import model_from_any_checkpoint


def export(checkpoint, out, shot) -> dict:
    result = CliRunner().invoke(main, ["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out", str(out),
                                       "--verify", str(shot), "--verify-frames", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.output)


def test_float_graph_matches_pytorch_on_a_capture(tiny_checkpoints, builtin_captures, tmp_path):
    fp, _ = tiny_checkpoints
    summary = export(fp, tmp_path / "fp.onnx", builtin_captures / "builtin_specular" / "crane")
    verify = summary["verify"]
    assert verify["against"] == "pytorch" and verify["frames"] == 3 and verify["max_output"] > 0
    # float32 agreement: linear HDR outputs reach hundreds on specular highlights
    assert verify["max_abs_diff"] <= 1e-5 * max(1.0, verify["max_output"])
    graph = onnx.load(tmp_path / "fp.onnx")
    assert graph.opset_import[0].version == 21 and [i.name for i in graph.graph.input] == ["color", "motion", "previous"]
    assert "GridSample" in {n.op_type for n in graph.graph.node}  # the warp is inside the step


def test_qdq_graph_carries_the_plan_and_matches_the_integer_reference(tiny_checkpoints, builtin_captures, tmp_path):
    _, q = tiny_checkpoints
    summary = export(q, tmp_path / "q.onnx", builtin_captures / "builtin_specular" / "crane")
    verify = summary["verify"]
    assert verify["against"] == "integer reference" and verify["max_output"] > 0
    # Same codes, same rounding; ONNX Runtime sums the dequantized conv products in float where the reference sums
    # integers exactly, so an activation within float rounding of a rounding boundary can land on the other code
    # (measured on builtin shots: most frames agree to 6e-7, a frame with such a flip differs by up to ~6 % of the
    # output range at a few pixels).
    assert verify["mean_abs_diff"] <= 1e-3 * verify["max_output"]
    assert verify["max_abs_diff"] <= 0.25 * verify["max_output"]

    graph = onnx.load(tmp_path / "q.onnx").graph
    inits = {i.name: i for i in graph.initializer}
    qmodel, _, _ = model_from_any_checkpoint(q)
    # One scale and one zero point per activation tensor, with the trained values and the plan's type.
    for tensor, quantizer in qmodel.act_quant.items():
        scale, zero = quantizer.scale_and_zero()
        assert numpy_helper.to_array(inits[f"{tensor}.scale"]) == np.float32(scale.item())
        assert int(numpy_helper.to_array(inits[f"{tensor}.zero_point"])) == int(zero)
        assert inits[f"{tensor}.zero_point"].data_type == (TensorProto.UINT8 if tensor == "input" else TensorProto.UINT4)
    scales = {n.input[1] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert scales == {f"{t}.scale" for t in qmodel.act_quant}
    # Weights: INT4 in U_e, INT8 for the first conv and the kernel predictors, one scale per output channel.
    weight_types = {name: init.data_type for name, init in inits.items() if name.endswith(".weight_quantized")}
    assert weight_types.pop("extractor.encoder.0.0.conv.weight_quantized") == TensorProto.INT8
    assert {t for n, t in weight_types.items() if n.startswith("filter.")} == {TensorProto.INT8}
    assert {t for n, t in weight_types.items() if n.startswith("extractor.")} == {TensorProto.INT4}
    for node in (n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")):
        codes, scale = inits[node.input[0]], inits[node.input[1]]
        assert node.attribute[0].name == "axis" and node.attribute[0].i == 0 and list(scale.dims) == [codes.dims[0]]
    assert not any(name.endswith(".conv.weight") for name in inits)  # no float copy of a quantized weight


@pytest.mark.parametrize("change", [{"warp_filter": "bicubic"}, {"input_kernel": 5}, {"input_kernel_lobe": 1.0}],
                         ids=["bicubic", "kernel-5", "lobe-1"])
def test_float_graph_of_a_model_option_matches_pytorch(change):
    import onnxruntime as ort
    import torch

    from qw.training.config import load_config
    from qw.training.export.onnx_graph import float_graph
    from qw.training.model.qwnet import QWNet

    cfg = load_config("paper").model.model_copy(update={**change, "widths": [8, 8, 8, 8, 8]})
    model = QWNet(cfg).eval()
    graph = float_graph(model)
    modes = {a.s for n in graph.graph.node if n.op_type == "GridSample" for a in n.attribute if a.name == "mode"}
    assert modes == ({b"cubic"} if cfg.warp_filter == "bicubic" else {b"linear"})
    g = torch.Generator().manual_seed(0)
    color, previous = torch.rand(1, 3, 32, 48, generator=g) * 4, torch.rand(1, 3, 32, 48, generator=g) * 4
    motion = torch.randn(1, 2, 32, 48, generator=g) * 3
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"color": color.numpy(), "motion": motion.numpy(), "previous": previous.numpy()})[0]
    with torch.no_grad():
        expected = model.step(color, model.warp_history(previous, motion)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_onnx_quantize_linear_rounds_like_the_fake_quantizer():
    """ONNX Runtime's QuantizeLinear/DequantizeLinear (UINT4, UINT8 with a zero point) give exactly the values of
    qw's activation quantizer, ties included: the graph and the integer reference start from the same codes."""
    import onnxruntime as ort
    import torch
    from onnx import helper

    from qw.training.quantization.fake_quant import activation_codes

    scale, zero = np.float32(0.1234567), 3
    x = np.random.default_rng(0).uniform(-0.5, 2.2, 200_000).astype(np.float32)
    x = np.concatenate([x, ((np.arange(-5, 260) + 0.5) * scale).astype(np.float32)])  # exact halves: ties to even
    for bits, code_type in ((4, TensorProto.UINT4), (8, TensorProto.UINT8)):
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
            [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]), helper.make_tensor("z", code_type, [], [zero])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        codes = activation_codes(torch.from_numpy(x), torch.tensor(scale), torch.tensor(float(zero)), 2 ** bits - 1)
        np.testing.assert_array_equal(y, (codes * torch.tensor(scale)).numpy())


def test_a_jitter_reading_model_is_refused_in_one_line_and_nothing_written(tmp_path):
    """The graph has no jitter input: exporting a `model.jitter_input` model crashed in the tracer."""
    cfg = Config(model=ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1], jitter_input=True))
    checkpoint = write_checkpoint(tmp_path / "j.pt", cfg)
    result = CliRunner().invoke(main, ["-q", "export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out",
                                       str(tmp_path / "j.onnx")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output + repr(result.exception)
    assert result.output.startswith(f"qw: error: {checkpoint}: ONNX export takes no model that reads the jitter")
    assert not (tmp_path / "j.onnx").exists()
