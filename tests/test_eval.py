"""`qw eval`: every method scored per frame against the reference; report, JSON, crops and plots written."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from click.testing import CliRunner

from qw.cli import main
from qw.datagen.capture_format import read_frame
from qw.training.evaluation import metrics
from qw.training.evaluation.evaluate import METRICS


def test_eval_report_on_builtin_shots(tiny_checkpoints, builtin_captures, tmp_path):
    fp, q = tiny_checkpoints
    shots = [builtin_captures / "builtin_fence" / "low_cut", builtin_captures / "builtin_specular" / "crane"]
    out = tmp_path / "report"
    args = ["-q", "eval", "--checkpoint", str(fp), "--checkpoint", str(q), "--out", str(out), "--frames", "3",
            "--flip-crop", "64", "--crop-size", "48"]
    for s in shots:
        args += ["--captures", str(s)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert str(out / "report.md") in result.output and "| TAA |" in result.output

    data = json.loads((out / "metrics.json").read_text())
    methods = ["aliased input", "TAA", "QW-Net FP32", "QW-Net W4A4"]
    assert list(data["methods"]) == methods
    shot = data["shots"]["builtin_fence/low_cut"]
    assert shot["frames"] == [0, 1, 2]
    for method in methods:
        per = shot["per_frame"][method]
        assert all(len(per[m]) == 3 for m in METRICS)
        assert per["tpsnr"][0] is None and per["tpsnr"][1] is not None  # no history on the first frame
    # The aliased input's score is exactly the metric of the captured colour against the reference.
    color, reference = (read_frame(shots[0], p, 1).astype(np.float32) for p in ("color", "reference"))
    assert shot["per_frame"]["aliased input"]["psnr"][1] == metrics.psnr(color, reference)
    assert shot["per_frame"]["aliased input"]["flip"][1] == metrics.flip(color, reference, 64)
    # Overall = frame-weighted mean over the two shots.
    both = [v for s in data["shots"].values() for v in s["per_frame"]["TAA"]["psnr"]]
    assert data["overall"]["TAA"]["psnr"] == np.mean(both)

    report = (out / "report.md").read_text()
    for method in methods:
        assert f"| {method} |" in report
    for stem in ("builtin_fence_low_cut", "builtin_specular_crane"):
        assert f"({stem}_crops.png)" in report
        assert imageio.imread(out / f"{stem}_crops.png").ndim == 3
        assert imageio.imread(out / f"{stem}_metrics.png").ndim == 3


def test_eval_needs_captured_shots(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--captures", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no complete captured shots" in result.output


def test_eval_lists_the_chosen_baselines_side_by_side(builtin_captures, tmp_path):
    shot = builtin_captures / "builtin_fence" / "rise"
    out = tmp_path / "report"
    args = ["-q", "eval", "--captures", str(shot), "--out", str(out), "--frames", "3", "--flip-crop", "32",
            "--crop-size", "32"]
    result = CliRunner().invoke(main, [*args, "--baseline", "taa", "--baseline", "taa-clamp"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["methods"]) == ["aliased input", "TAA", "TAA min/max clamp"]
    per_frame = data["shots"]["builtin_fence/rise"]["per_frame"]
    clamp_first = per_frame["TAA min/max clamp"]["psnr"][0]
    assert clamp_first == pytest.approx(per_frame["aliased input"]["psnr"][0], abs=1e-4)  # no history: the input
    assert per_frame["TAA"]["psnr"][2] != per_frame["TAA min/max clamp"]["psnr"][2]
    # one crop per method and the reference, side by side: the figure is much wider than tall
    crops = imageio.imread(out / "builtin_fence_rise_crops.png")
    assert crops.shape[1] > 3 * crops.shape[0]
    none = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "none"), "--baseline", "none"])
    assert none.exit_code == 0 and "| TAA |" not in none.output and "| aliased input |" in none.output
