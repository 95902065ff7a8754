"""`qw quantize` and `qw export` end to end: real checkpoints, a real .qwq, the integer check on real frames."""

import json
import shutil

import torch
from click.testing import CliRunner

from qw.cli import main
from qw.training.quantization import fake_quant as quant
from qw.training.quantization.qat import model_from_any_checkpoint
from qw.training.train.checkpoints import load_checkpoint


def test_quantize_writes_a_quantized_checkpoint_with_the_plan(tiny_checkpoints):
    fp, q = tiny_checkpoints
    ckpt = load_checkpoint(q)
    assert ckpt["step"] == 8 and ckpt["config"]["quant"] == quant.QUANT_PRESETS["w4a4"].model_dump()
    assert quant.is_quantized_state(ckpt["model"]) and not quant.is_quantized_state(load_checkpoint(fp)["model"])
    assert not any("bn." in k for k in ckpt["model"])  # folded
    record = json.loads((q.parent / "quantize.json").read_text())
    # one clip per activation tensor: the 23 convs (18 in U_e, 5 predictors) read 15 tensors
    assert record["source_checkpoint"] == str(fp) and len(record["initial_clips"]) == 15
    model, _, quantized = model_from_any_checkpoint(q)
    assert quantized and isinstance(model.extractor.first.conv, quant.QuantConv)
    # The clips moved away from their calibrated start (they are trained).
    start = torch.tensor(list(record["initial_clips"].values())).log()
    trained = torch.stack([q.log_clip.detach() for q in model.act_quant.values()])
    assert not torch.allclose(start, trained)


def test_quantize_refuses_a_quantized_checkpoint_and_an_existing_run(tiny_checkpoints, tmp_path):
    fp, q = tiny_checkpoints
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", "--checkpoint", str(q), "--store", "unused", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "already a quantized checkpoint" in result.output
    result = runner.invoke(main, ["quantize", "--checkpoint", str(fp), "--store", "x", "--out", str(q.parent)])
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_export_cli_verifies_the_integer_reference_on_a_capture(tiny_checkpoints, builtin_captures, tmp_path):
    fp, q = tiny_checkpoints
    out = tmp_path / "model.qwq"
    shot = builtin_captures / "builtin_specular" / "crane"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(q), "--out", str(out), "--verify", str(shot),
                                       "--verify-frames", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["verify"]["bit_identical"] and summary["verify"]["max_abs_diff"] == 0.0
    assert summary["verify"]["frames"] == 2 and summary["verify"]["max_output"] > 0  # not two empty outputs
    assert summary["bit_widths"] == ["W4A4", "W8A4", "W8A8"]  # U_e, the kernel predictors, the first conv
    assert summary["bytes"] == out.stat().st_size and out.read_bytes()[:4] == b"QWQ\0"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(fp), "--out", str(tmp_path / "fp.qwq")])
    assert result.exit_code == 2 and "run `qw quantize` first" in result.output


def test_export_verify_on_a_captures_folder_is_refused_before_writing(tiny_checkpoints, builtin_captures, tmp_path):
    _, q = tiny_checkpoints
    out = tmp_path / "model.qwq"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(q), "--out", str(out), "--verify",
                                       str(builtin_captures)])
    assert result.exit_code == 2, result.output
    assert f"{builtin_captures}: a captures folder (" in result.output
    assert "qw export --verify takes one shot, e.g. --verify " in result.output
    assert not out.exists()  # no file that --verify was asked to check and did not


def test_export_verify_on_a_shot_with_a_broken_frame_writes_nothing(tiny_checkpoints, tmp_path):
    """A --verify shot whose frame held NaN was found only after the model was written: the command failed and
    left the file it had not checked."""
    import numpy as np
    from train_helpers import small_shot

    from qw.datagen.capture_format import frame_path, read_frame, write_frame

    fp, q = tiny_checkpoints
    shot = small_shot(tmp_path / "captures")
    motion = read_frame(shot, "motion", 1).copy()
    motion[2, 3, 0] = np.nan
    write_frame(shot, "motion", 1, motion)
    for fmt, checkpoint in (("qwq", q), ("onnx", fp)):
        out = tmp_path / f"model.{fmt}"
        result = CliRunner().invoke(main, ["export", "--format", fmt, "--checkpoint", str(checkpoint), "--out",
                                           str(out), "--verify", str(shot), "--verify-frames", "3"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output + repr(result.exception)
        assert result.output.startswith(f"qw: error: {frame_path(shot, 'motion', 1)}: 1 non-finite values")
        assert not out.exists()


def test_quantize_twice_writes_the_same_checkpoint_bytes(tiny_checkpoints, tmp_path):
    """Nothing seeded torch's global RNG, which each process starts from a random seed: two identical `qw quantize`
    runs recorded different RNG states in their checkpoints."""
    fp, q = tiny_checkpoints
    torch.rand(3)  # whatever was drawn before must not matter
    result = CliRunner().invoke(main, ["-q", "quantize", "--checkpoint", str(fp), "--store",
                                       str(fp.parents[1] / "blocks.zarr"), "--out", str(tmp_path / "q"), "--steps",
                                       "8", "--calibration-blocks", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "q" / "last.pt").read_bytes() == q.read_bytes()


def test_quantize_resume_keeps_the_runs_own_settings(tiny_checkpoints, tmp_path, monkeypatch):
    """`qw quantize --resume` without repeating `--steps 8` rebuilt the run's settings from the QAT defaults and
    went on fine-tuning to 2000 steps; like `qw train --resume` it continues with the run's own."""
    from qw.training.quantization import qat

    fp, q = tiny_checkpoints
    run = tmp_path / "q"
    shutil.copytree(q.parent, run)
    trained = []
    monkeypatch.setattr(qat, "train", lambda model, cfg, *args, **kwargs: trained.append(cfg.train) or {})
    base = ["quantize", "--checkpoint", str(fp), "--store", str(fp.parents[1] / "blocks.zarr"), "--out", str(run),
            "--resume"]
    for extra, steps in (([], 8), (["--steps", "12"], 12)):
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert trained[-1].steps == steps and trained[-1].lr == load_checkpoint(q)["config"]["train"]["lr"]


def test_quantize_resume_from_another_checkpoint_is_refused(tiny_checkpoints, tmp_path):
    """--resume went on fine-tuning the run's own model and ignored the --checkpoint given."""
    fp, q = tiny_checkpoints
    run = tmp_path / "q"
    shutil.copytree(q.parent, run)
    other = load_checkpoint(fp)
    other["model"]["filter.predictors.0.bias"] += 0.01
    torch.save(other, tmp_path / "other.pt")
    before = (run / "last.pt").read_bytes()
    result = CliRunner().invoke(main, ["quantize", "--checkpoint", str(tmp_path / "other.pt"), "--store",
                                       str(fp.parents[1] / "blocks.zarr"), "--out", str(run), "--resume"])
    assert result.exit_code == 2 and f"fine-tunes {fp}, not {tmp_path / 'other.pt'}" in result.output
    assert (run / "last.pt").read_bytes() == before


def test_quiet_quantize_draws_no_progress_bar(tiny_checkpoints, tmp_path, monkeypatch):
    """`qw -q quantize` drew the fine-tuning's progress bar on a terminal (`-q` promises none, as `qw -q train`
    keeps): the CLI's progress setting reaches the training loop."""
    from qw.training.quantization import qat

    fp, q = tiny_checkpoints
    run = tmp_path / "q"
    shutil.copytree(q.parent, run)
    progress = []
    monkeypatch.setattr(qat, "train", lambda *args, **kwargs: progress.append(kwargs.get("progress", True)) or {})
    base = ["quantize", "--checkpoint", str(fp), "--store", str(fp.parents[1] / "blocks.zarr"), "--out", str(run),
            "--resume"]
    for quiet in ([], ["-q"]):
        result = CliRunner().invoke(main, quiet + base)
        assert result.exit_code == 0, result.output + repr(result.exception)
    assert progress == [True, False]
