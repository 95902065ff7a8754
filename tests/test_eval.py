"""`qw eval`: every method scored per frame against the reference; report, JSON, crops and plots written."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from click.testing import CliRunner
from train_helpers import small_shot

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
        assert f"({stem}_crops.png)" in report and f"({stem}_worst.png)" in report
        assert imageio.imread(out / f"{stem}_crops.png").ndim == 3
        assert imageio.imread(out / f"{stem}_metrics.png").ndim == 3
        worst = imageio.imread(out / f"{stem}_worst.png")  # one row per method, a column per method + reference
        assert worst.shape[0] > 2 * worst.shape[1] / len(methods)
    assert set(shot["worst_boxes"]) == set(methods)
    # three frames: no steady state yet (it starts at frame 8), and the paired differences exist for the QW-Nets
    assert data["steady_state_from"] == metrics.STEADY_STATE_FROM and data["overall_steady"]["TAA"]["psnr"] is None
    assert set(data["paired"]) == {"QW-Net FP32", "QW-Net W4A4"}
    fp_all = data["paired"]["QW-Net FP32"]["all"]["psnr"]
    per_shot = [s["mean"]["QW-Net FP32"]["psnr"] - s["mean"]["TAA"]["psnr"] for s in data["shots"].values()]
    assert fp_all["n"] == 2 and fp_all["mean"] == pytest.approx(np.mean(per_shot))
    assert "## Paired per-shot differences from TAA" in report


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


def _shot(name: str, values: dict[str, list[float]]) -> "ShotResult":
    from qw.training.evaluation.evaluate import ShotResult

    return ShotResult(name, list(range(len(next(iter(values.values()))))),
                      {label: {m: list(v) if m == "psnr" else [None] * len(v) for m in METRICS}
                       for label, v in values.items()})


def test_steady_state_means_skip_each_shots_start_up_frames():
    from qw.training.evaluation.evaluate import overall_means

    start = metrics.STEADY_STATE_FROM
    a = _shot("a", {"TAA": [0.0] * start + [10.0, 20.0]})
    b = _shot("b", {"TAA": [5.0] * start + [40.0]})
    assert overall_means([a, b], ["TAA"], start)["TAA"]["psnr"] == pytest.approx((10 + 20 + 40) / 3)
    assert overall_means([a, b], ["TAA"])["TAA"]["psnr"] == pytest.approx((70 + 5 * start) / (3 + 2 * start))
    assert a.mean("TAA", "psnr", start) == 15.0


def test_paired_differences_pair_each_shots_means_against_taa():
    from qw.training.evaluation.evaluate import paired_differences

    start = metrics.STEADY_STATE_FROM
    # per shot: QW-Net − TAA is −1 over the start-up and +2 (shot a) / +1 (shot b) in the steady state
    a = _shot("a", {"TAA": [30.0] * start + [30.0] * 4, "QW": [29.0] * start + [32.0] * 4})
    b = _shot("b", {"TAA": [20.0] * start + [25.0] * 4, "QW": [19.0] * start + [26.0] * 4})
    paired = paired_differences([a, b], ["aliased input", "TAA", "QW"])
    assert set(paired) == {"QW"}
    steady = paired["QW"]["steady"]["psnr"]
    assert steady["mean"] == pytest.approx(1.5) and steady["n"] == 2 and 1.0 <= steady["low"] <= steady["high"] <= 2.0
    everything = paired["QW"]["all"]["psnr"]
    assert everything["mean"] == pytest.approx(((-8 + 8) / 12 + (-8 + 4) / 12) / 2)
    assert "tpsnr" not in paired["QW"]["all"]  # no shot has a value: no pairs, no entry
    assert paired_differences([a, b], ["QW"]) == {}  # nothing to compare against


def test_worst_window_finds_each_error_map_peak():
    from qw.training.evaluation.evaluate import worst_window

    error = np.zeros((64, 96), np.float32)
    error[40:56, 8:24] = 1.0
    y, x, s = worst_window(error, 16)
    assert s == 16 and abs(y - 40) <= 4 and abs(x - 8) <= 4  # on the size/4 grid
    assert worst_window(np.zeros((8, 8), np.float32), 16)[2] == 8  # clipped to the image


def test_a_reference_frame_of_another_size_is_one_line_naming_it(tmp_path):
    """A reference (or depth) frame of another size than the shot's crashed the metrics with a numpy traceback."""
    from qw.datagen.capture_format import PASSES, frame_path, write_frame

    shot = small_shot(tmp_path / "captures")
    for name in ("reference", "depth"):
        original = frame_path(shot, name, 2).read_bytes()
        write_frame(shot, name, 2, np.ones((32, 32, len(PASSES[name].channels)), PASSES[name].dtype))
        result = CliRunner().invoke(main, ["-q", "eval", "--captures", str(tmp_path / "captures"), "--out",
                                           str(tmp_path / "r"), "--flip-crop", "16"])
        # a capture that breaks its contract: exit status 1 (docs/cli.md)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output + repr(result.exception)
        assert result.output == f"qw: error: {frame_path(shot, name, 2)}: frame is 32×32, capture.json says 64×48\n"
        assert not (tmp_path / "r" / "report.md").exists()
        frame_path(shot, name, 2).write_bytes(original)


def test_a_reference_frame_with_nan_or_inf_is_one_line_naming_it(tmp_path):
    """A non-finite reference pixel made every score of that frame NaN, written into report.md and metrics.json."""
    from qw.datagen.capture_format import frame_path, write_frame

    shot = small_shot(tmp_path / "captures")
    reference = read_frame(shot, "reference", 1).copy()
    reference[3, 5, 0] = np.inf
    write_frame(shot, "reference", 1, reference)
    result = CliRunner().invoke(main, ["-q", "eval", "--captures", str(tmp_path / "captures"), "--out",
                                       str(tmp_path / "r"), "--flip-crop", "16"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output + repr(result.exception)
    assert result.output.startswith(f"qw: error: {frame_path(shot, 'reference', 1)}: 1 non-finite values")
    assert not (tmp_path / "r" / "report.md").exists()


def test_frames_smaller_than_the_ssim_window_are_refused_before_anything_is_written(tmp_path):
    """A 10-pixel-high shot scored SSIM over an empty map: NaN in report.md and metrics.json."""
    shot = small_shot(tmp_path / "captures", frames=2, resolution=(16, 10))
    result = CliRunner().invoke(main, ["-q", "eval", "--captures", str(tmp_path / "captures"), "--out",
                                       str(tmp_path / "r"), "--flip-crop", "16"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert result.output == (f"qw: error: {shot}: frames of 16×10 are smaller than SSIM's 11-pixel window; "
                             "qw eval needs at least 11×11\n")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="at least 11×11 pixels, got 16×10"):
        metrics.ssim(np.ones((10, 16, 3), np.float32), np.ones((10, 16, 3), np.float32))
    assert metrics.ssim(np.ones((11, 16, 3), np.float32), np.ones((11, 16, 3), np.float32)) == pytest.approx(1.0, abs=1e-3)


def test_an_interrupted_eval_leaves_no_earlier_report_beside_its_own_output(tmp_path, monkeypatch):
    """metrics.json is written last; an eval stopped partway through a folder that held an earlier run's report
    left those numbers beside the new run's figures, as if they were its own."""
    from qw.training.evaluation import evaluate

    small_shot(tmp_path / "captures")
    args = ["-q", "eval", "--captures", str(tmp_path / "captures"), "--out", str(tmp_path / "r"), "--flip-crop", "16"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (tmp_path / "r" / "metrics.json").is_file() and (tmp_path / "r" / "report.md").is_file()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_shot", interrupted)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and result.output.splitlines()[-1].startswith("qw: interrupted; "), result.output
    assert not (tmp_path / "r" / "metrics.json").exists() and not (tmp_path / "r" / "report.md").exists()
