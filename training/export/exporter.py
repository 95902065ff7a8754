"""`qw export`: a checkpoint → a `.qwq` file (`qw.training.export.qwq`) or an ONNX graph (`qw.training.export.onnx_graph`), optionally
checked on a captured shot against the implementation it must match."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from qw.datagen.capture_format import atomic_path, load_meta
from qw.datagen.errors import QwError, require_extra
from qw.training.infer import check_shot_folder, frame_range, input_frames, model_frames, run_qwnet
from qw.training.export.integer_ref import integer_conv, load_integer_model, rebuild_network
from qw.training.quantization.fake_quant import is_integer
from qw.training.quantization.qat import model_from_any_checkpoint
from qw.training.export.qwq import exported_model, write_qwq

FORMATS = ("qwq", "onnx")
Runner = Callable[[Iterator[tuple[torch.Tensor, torch.Tensor, bool]]], Iterator[torch.Tensor]]


@torch.no_grad()
def compare_on_shot(run_a: Runner, run_b: Runner, shot: str | Path, frames: int = 4) -> dict:
    """Run two implementations recurrently on a captured shot's first frames; the largest output difference."""
    meta = load_meta(shot)
    span = frame_range(meta, 0, frames)
    feed_a, feed_b = itertools.tee(model_frames(Path(shot), meta, span))  # each frame is read from disk once
    worst, total, peak, identical = 0.0, 0.0, 0.0, True
    for a, b in zip(run_a(feed_a), run_b(feed_b)):
        worst = max(worst, float((a - b).abs().max()))
        total += float((a - b).abs().mean())
        peak = max(peak, float(a.abs().max()))
        identical = identical and torch.equal(a, b)
    return {"shot": str(shot), "frames": len(span), "max_abs_diff": worst, "mean_abs_diff": total / len(span),
            "max_output": peak, "bit_identical": identical}


def _runner(model: torch.nn.Module) -> Runner:
    return lambda frames: run_qwnet(model, frames)


def _export_qwq(qmodel: torch.nn.Module, cfg, out: str, verify_shot: str | None, verify_frames: int) -> dict:
    exported = exported_model(qmodel, cfg)
    header = write_qwq(out, exported)
    bits = sorted({(layer.weight_bits, exported.activations[layer.input].bits) for layer in exported.layers})
    summary = {"path": str(out), "format": "qwq", "layers": len(header["layers"]),
               "activations": len(header["activations"]), "bytes": Path(out).stat().st_size,
               "weight_bytes": sum(layer["weight"]["nbytes"] for layer in header["layers"]),
               "bit_widths": [f"W{w}A{a}" for w, a in bits]}
    if verify_shot is not None:
        summary["verify"] = compare_on_shot(_runner(qmodel), _runner(load_integer_model(out)[0]), verify_shot,
                                            verify_frames)
    return summary


def _export_onnx(model: torch.nn.Module, cfg, quantized: bool, out: str, verify_shot: str | None,
                 verify_frames: int) -> dict:
    """Float checkpoints give the float step, checked against PyTorch; quantized ones the QDQ step, checked
    against the integer reference built from the same exported numbers."""
    require_extra("onnx", "onnx", "qw export --format onnx")
    require_extra("onnxruntime", "onnx", "qw export --format onnx")
    import onnx

    from qw.training.export.onnx_graph import OPSET, float_graph, qdq_graph, run_graph

    if quantized:
        exported = exported_model(model, cfg)
        graph, reference = qdq_graph(exported), rebuild_network(exported, integer_conv, out)
    else:
        graph, reference = float_graph(model), model
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))
    types = {init.data_type for init in graph.graph.initializer}
    summary = {"path": str(out), "format": "onnx", "opset": OPSET, "quantized": quantized,
               "bytes": Path(out).stat().st_size, "nodes": len(graph.graph.node),
               "integer_types": sorted(onnx.TensorProto.DataType.Name(t) for t in types
                                       if t not in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64))}
    if verify_shot is not None:
        run_onnx = lambda frames: run_graph(graph, frames, cfg.model.size_multiple)  # noqa: E731
        summary["verify"] = {"against": "integer reference" if quantized else "pytorch",
                             **compare_on_shot(run_onnx, _runner(reference), verify_shot, verify_frames)}
    return summary


def export_command(checkpoint: str, out: str, verify_shot: str | None = None, verify_frames: int = 4,
                   fmt: str = "qwq") -> dict[str, Any]:
    """`qw export`: a checkpoint → `.qwq` (quantized checkpoints) or ONNX (float or quantized); returns a summary.

    With `verify_shot`, the written model is run on that captured shot and compared: `.qwq` in the integer reference
    against the fake-quantized model; ONNX in ONNX Runtime against PyTorch (float) or the integer reference (QDQ).
    """
    if fmt not in FORMATS:
        raise QwError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if Path(out).is_dir():
        raise QwError(f"--out {out}: a directory; give the file to write, e.g. {Path(out) / f'model.{fmt}'}")
    if verify_shot is not None:  # before anything is written: a wrong --verify must not leave an unchecked file
        check_shot_folder(Path(verify_shot), "qw export --verify", "--verify")
        meta = load_meta(verify_shot)
        for _ in input_frames(Path(verify_shot), meta, frame_range(meta, 0, verify_frames)):
            pass  # a missing or non-finite frame is refused here, not after the model is written
    model, cfg, quantized = model_from_any_checkpoint(checkpoint)
    if fmt == "onnx" and quantized and not all(is_integer(bits) for bits in cfg.quant.model_dump().values()):
        raise QwError(f"{checkpoint}: ONNX export takes a float checkpoint or an integer plan (w4a4, w8a8), not fp16")
    if fmt == "onnx" and cfg.model.jitter_input:
        # The graph's inputs are colour, motion and the previous output (docs/onnx.md): no jitter to feed.
        raise QwError(f"{checkpoint}: ONNX export takes no model that reads the jitter (model.jitter_input); the "
                      "graph's inputs are color, motion and previous")
    if fmt == "onnx":
        return _export_onnx(model, cfg, quantized, out, verify_shot, verify_frames)
    if not quantized:
        raise QwError(f"{checkpoint}: a full-precision checkpoint; run `qw quantize` first and export its result")
    return _export_qwq(model, cfg, out, verify_shot, verify_frames)
