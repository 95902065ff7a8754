"""`qw.datagen.validate` and `qw datagen validate` on real synthetic captures, valid and deliberately broken."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from capture_helpers import FRAMES, HEIGHT, WIDTH, make_capture, ndc_grid, perspective
from click.testing import CliRunner

from qw.cli import main
from qw.datagen.capture_format import (META_FILE, finish_capture, frame_path, load_meta, shot_folders, write_exr,
                                    write_frame)
from qw.datagen.validate import reprojected_motion, reprojection_agreement, validate_capture


@pytest.fixture(scope="module")
def good_shot(tmp_path_factory) -> Path:
    shot = tmp_path_factory.mktemp("captures") / "synthetic" / "good"
    make_capture(shot)
    return shot


@pytest.fixture
def shot(tmp_path) -> Path:
    path = tmp_path / "synthetic" / "s1"
    make_capture(path)
    return path


def refinish(shot: Path) -> None:
    """Re-checksum after a corruption so that only the check under test fails."""
    finish_capture(shot, load_meta(shot))


def test_valid_capture_passes_every_check(good_shot):
    report = validate_capture(good_shot)
    assert report.ok, report.problems
    assert {c.name: c.status for c in report.checks.values()} == dict.fromkeys(report.checks, "pass")
    assert report.lowest_agreement == 1.0


# ------------------------------------------------------------------------------------------- reprojection


def test_reprojected_motion_matches_analytic_translation(good_shot):
    from capture_helpers import analytic_motion, plane_depth

    meta = load_meta(good_shot)
    proj = np.asarray(meta.cameras[0].projection)
    for i in range(1, FRAMES):
        depth = np.full((HEIGHT, WIDTH), plane_depth(i))
        got = reprojected_motion(depth, meta.cameras[i - 1], meta.cameras[i], WIDTH, HEIGHT)
        expected = analytic_motion(i, proj)
        assert np.abs(expected).max() > 0.5  # the move is large enough for the comparison to mean something
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_reprojected_motion_of_a_pure_rotation_ignores_depth():
    """Camera yaws by 2° about +Y: motion depends on the pixel only, whatever the (random) depth."""
    proj = perspective()
    angle = math.radians(2.0)
    c, s = math.cos(angle), math.sin(angle)
    rot_y = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]])
    cam_prev = {"view": np.eye(4), "projection": proj}
    cam_cur = {"view": rot_y.T, "projection": proj}  # view = inverse of the camera's rotation
    depth = np.random.default_rng(1).uniform(1, 50, (HEIGHT, WIDTH))
    got = reprojected_motion(depth, cam_prev, cam_cur, WIDTH, HEIGHT)

    # Direction through each pixel in the current camera, rotated into the previous camera's frame.
    nx, ny = ndc_grid()
    x, y, z = nx / proj[0, 0], ny / proj[1, 1], -np.ones_like(nx)
    x_prev, z_prev = c * x + s * z, -s * x + c * z
    nx_prev, ny_prev = proj[0, 0] * x_prev / -z_prev, proj[1, 1] * y / -z_prev
    expected = np.stack([(nx - nx_prev) * WIDTH / 2, -(ny - ny_prev) * HEIGHT / 2], axis=-1)
    assert np.abs(expected[..., 0]).mean() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_reprojected_motion_marks_invalid_depth_nan():
    proj = perspective()
    depth = np.full((HEIGHT, WIDTH), 5.0)
    depth[0, 0], depth[1, 1] = 0.0, np.inf
    got = reprojected_motion(depth, (np.eye(4), proj), (np.eye(4), proj), WIDTH, HEIGHT)
    assert np.isnan(got[0, 0]).all() and np.isnan(got[1, 1]).all()
    assert np.abs(got[2:, 2:]).max() < 1e-9  # no camera move: zero motion elsewhere


def test_sign_flipped_motion_fails_reprojection(tmp_path):
    shot = tmp_path / "flipped"
    make_capture(shot, motion_sign=-1.0)
    report = validate_capture(shot)
    assert report.failed_checks == ["motion warp", "reprojection"]  # the reference and the cameras both refute it
    problems = report.checks["reprojection"].problems
    assert len(problems) == FRAMES - 1  # every frame with history
    assert str(frame_path(shot, "motion", 1)) in problems[0]
    assert "agree with the depth + camera reprojection" in problems[0]
    assert len(report.checks["motion warp"].problems) == FRAMES - 1
    assert "worse" in report.checks["motion warp"].problems[0] and "than the reversed motion" in report.problems[0]


def test_reprojection_skipped_without_cameras(tmp_path):
    shot = tmp_path / "nocam"
    make_capture(shot, cameras=False)
    report = validate_capture(shot)
    assert report.ok and report.checks["reprojection"].status == "skip"


# ------------------------------------------------------------------------------------------- contract violations


def _delete(shot):
    path = frame_path(shot, "color", 2)
    path.unlink()
    return path, "files", "missing frame"


def _extra_frame(shot):
    path = frame_path(shot, "depth", FRAMES)
    write_frame(shot, "depth", FRAMES, np.ones((HEIGHT, WIDTH, 1)))
    return path, "files", "unexpected file"


def _truncate(shot):
    path = frame_path(shot, "motion", 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refinish(shot)
    return path, "readable", "truncated or corrupt EXR"


def _not_exr(shot):
    path = frame_path(shot, "depth", 1)
    path.write_text("this is not an image\n")
    refinish(shot)
    return path, "readable", "not an EXR file"


def _missing_channel(shot):
    path = frame_path(shot, "color", 1)
    write_exr(path, np.ones((HEIGHT, WIDTH, 2)), ("R", "G"), np.float16)
    refinish(shot)
    return path, "readable", "missing channel(s) ['B']"


def _wrong_dtype(shot):
    path = frame_path(shot, "color", 1)
    write_exr(path, np.ones((HEIGHT, WIDTH, 3)), ("R", "G", "B"), np.float32)
    refinish(shot)
    return path, "readable", "expected float16"


def _wrong_resolution(shot):
    path = frame_path(shot, "reference", 3)
    write_frame(shot, "reference", 3, np.ones((HEIGHT // 2, WIDTH, 3)))
    refinish(shot)
    return path, "resolution", f"resolution {WIDTH}x{HEIGHT // 2}, capture.json says {WIDTH}x{HEIGHT}"


def _pixels(value):
    def corrupt(shot):
        path = frame_path(shot, "reference", 2)
        image = np.ones((HEIGHT, WIDTH, 3))
        image[5, 7, 1] = value
        write_frame(shot, "reference", 2, image)
        refinish(shot)
        return path, "finite", f"1 pixel(s) with {'NaN' if np.isnan(value) else 'Inf'} values, first at x=7, y=5"
    return corrupt


def _checksum(shot):
    path = frame_path(shot, "color", 0)
    write_frame(shot, "color", 0, np.zeros((HEIGHT, WIDTH, 3)))
    return path, "checksums", "sha256 does not match"


def _implausible_motion(shot):
    path = frame_path(shot, "motion", 0)
    motion = np.zeros((HEIGHT, WIDTH, 2))
    motion[3, 4] = (0.0, 1e4)
    write_frame(shot, "motion", 0, motion)
    refinish(shot)
    return path, "motion range", f"implausible motion of 10000.0 px (first at x=4, y=3); limit is max(width, " \
                                 f"height) = {WIDTH}"


def _no_meta(shot):
    path = shot / META_FILE
    path.unlink()
    return path, "capture.json", "missing (the capture is incomplete"


def _newer_meta(shot):
    path = shot / META_FILE
    meta = json.loads(path.read_text())
    meta["format"] = "qw-capture/2"
    path.write_text(json.dumps(meta))
    return path, "capture.json", "newer than this qw reads"


def _bad_json(shot):
    path = shot / META_FILE
    path.write_text("{not json")
    return path, "capture.json", "not valid JSON"


CORRUPTIONS = {
    "missing frame": _delete, "extra frame": _extra_frame, "truncated EXR": _truncate, "not an EXR": _not_exr,
    "missing channel": _missing_channel, "wrong dtype": _wrong_dtype, "wrong resolution": _wrong_resolution,
    "NaN pixels": _pixels(np.nan), "Inf pixels": _pixels(np.inf), "checksum mismatch": _checksum,
    "implausible motion": _implausible_motion, "capture.json missing": _no_meta,
    "capture.json newer version": _newer_meta, "capture.json not JSON": _bad_json,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_each_violation_fails_its_check_naming_file_and_problem(shot, corrupt):
    path, check, problem = corrupt(shot)
    report = validate_capture(shot)
    assert not report.ok
    assert report.failed_checks == [check], report.problems
    assert any(p.startswith(f"{path}: ") and problem in p for p in report.problems), report.problems


# ------------------------------------------------------------------------------------------- CLI


def test_cli_validates_a_root_of_shots_and_fails_on_any_bad_one(tmp_path):
    good, bad = tmp_path / "scene" / "a", tmp_path / "scene" / "b"
    make_capture(good, frames=2)
    make_capture(bad, frames=2)
    (bad / META_FILE).unlink()
    write_frame(tmp_path / ".unreal" / "scene" / "a" / "raw", "color", 0, np.ones((2, 2, 3)))  # not searched

    (good / "color" / ".000001.exr.x1y2.tmp").write_bytes(b"left by an interrupted write")  # ignored
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(good), str(good.parent / ".." / "scene" / "a")])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "1 shot(s): 1 passed, 0 failed" in result.output

    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()  # the table; progress bars go to stderr
    assert any(line.startswith(str(good)) and "PASS" in line for line in lines)
    assert any(line.startswith(str(bad)) and "FAIL: capture.json" in line for line in lines)
    assert f"{bad / META_FILE}: missing" in result.output
    assert "2 shot(s): 1 passed, 1 failed" in result.output


def test_cli_max_problems_lists_that_many_and_counts_the_rest(tmp_path):
    shot = tmp_path / "scene" / "a"
    make_capture(shot, frames=3)
    for i in range(3):
        frame_path(shot, "color", i).unlink()
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(shot), "--max-problems", "1"])
    assert result.exit_code == 1
    assert result.output.count("color/0000") == 1 and "… and 2 more problems" in result.output
    # a negative count printed all but the last problems and claimed more than there were
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(shot), "--max-problems", "-1"])
    assert result.exit_code == 2 and "Invalid value for '--max-problems'" in result.output


def test_cli_reports_a_directory_without_captures_as_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["datagen", "validate", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"qw: error: {tmp_path}: no capture here (no capture.json or pass folders " \
                                    f"['color', 'reference', 'motion', 'depth'] at or below it)"


def test_builtin_renderer_captures_pass_including_reprojection(builtin_captures):
    """Real renders (moving objects, a camera cut) through the whole validator, reprojection check included."""
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(builtin_captures)])
    assert result.exit_code == 0, result.output
    for shot in shot_folders(builtin_captures):
        report = validate_capture(shot)
        assert report.checks["reprojection"].status == "pass" and report.lowest_agreement > 0.5


# ------------------------------------------------------------------------------------------- meaning


def _copy_shot(builtin_captures: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(builtin_captures / "builtin_fence" / "rise", tmp_path / "builtin_fence" / "rise"))


def _rename_frames(shot: Path, order: list[int]) -> None:
    """Stored frame k becomes the old frame order[k], in every pass (capture.json's cameras stay as recorded)."""
    from qw.datagen.capture_format import PASSES

    for pass_name in PASSES:
        data = [frame_path(shot, pass_name, i).read_bytes() for i in range(len(order))]
        for k, old in enumerate(order):
            frame_path(shot, pass_name, k).write_bytes(data[old])


def _zero_depth(shot):
    for i in range(load_meta(shot).frame_count):
        write_frame(shot, "depth", i, np.zeros((256, 320, 1)))
    return ["depth"], "no pixel has a positive depth"


def _swapped(shot):
    _rename_frames(shot, [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11])
    # frame 6 must undo the step from 5 to 6; its motion (the old frame 5's) makes it. The cameras move smoothly, so
    # the reprojection of each frame's own depth and motion still agrees: only the reference shows the swap.
    return ["motion warp"], "motion/000006.exr: the previous reference warped by this motion predicts the frame " \
                            "worse"


def _reversed(shot):
    _rename_frames(shot, list(range(11, -1, -1)))
    return ["motion warp", "reprojection"], "than the reversed motion"


def _repeated(shot):
    _rename_frames(shot, [0, 1, 2, 3, 4, 5, 5, 7, 8, 9, 10, 11])
    return ["motion warp"], "motion/000006.exr: the previous reference warped by this motion predicts the frame " \
                            "worse (0.0"


def _input_is_reference(shot):
    for i in range(load_meta(shot).frame_count):
        frame_path(shot, "color", i).write_bytes(frame_path(shot, "reference", i).read_bytes())
    return ["aliasing"], "the input is the reference"


MEANING = {"all-zero depth": _zero_depth, "two frames swapped": _swapped, "frames reversed": _reversed,
           "a frame repeated": _repeated, "input equals reference": _input_is_reference}


@pytest.mark.parametrize("break_it", MEANING.values(), ids=MEANING.keys())
def test_a_capture_broken_in_meaning_fails_although_its_files_are_consistent(builtin_captures, tmp_path, break_it):
    """Real renders, re-checksummed after each change: files, checksums and pixels are all valid; only what the
    frames mean is wrong."""
    shot = _copy_shot(builtin_captures, tmp_path)
    assert validate_capture(shot).verdict == "PASS"
    failed, message = break_it(shot)
    refinish(shot)
    report = validate_capture(shot)
    assert report.failed_checks == failed, report.problems
    assert any(message in p for p in report.problems), report.problems


def test_source_frames_out_of_order_fail_the_sequence_check(shot):
    path = shot / META_FILE
    meta = json.loads(path.read_text())
    meta["source_frames"] = [0, 2, 1, 3]
    path.write_text(json.dumps(meta))
    report = validate_capture(shot)
    assert report.failed_checks == ["sequence"]
    assert "stored frame 2 is source frame 1, after 2" in report.problems[0]


def test_a_skipped_check_is_reported_as_skipped_never_as_pass(tmp_path):
    shot = tmp_path / "scene" / "nocam"
    make_capture(shot, cameras=False)
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(shot)])
    assert result.exit_code == 0, result.output  # nothing failed
    line = next(line for line in result.stdout.splitlines() if line.startswith(str(shot)))
    assert "PASS" not in line and line.endswith("SKIPPED reprojection (others pass)"), line
    assert "    SKIPPED reprojection: capture.json has no camera matrices" in result.stdout
    assert "1 shot(s): 0 passed, 0 failed, 1 with checks SKIPPED (the others pass)" in result.stdout


def test_the_reprojection_tolerance_scales_with_the_frame(tmp_path, monkeypatch):
    """At 40×24 the camera of this shot moves ~0.03 px per frame: a fixed 0.25 px tolerance passed the motion with
    its sign flipped; scaled to the frame (0.25 px at 1920) it fails it."""
    import capture_helpers

    monkeypatch.setattr(capture_helpers, "STEP", capture_helpers.STEP * 0.05)
    make_capture(tmp_path / "good")
    make_capture(tmp_path / "flipped", motion_sign=-1.0)
    assert validate_capture(tmp_path / "good").checks["reprojection"].status == "pass"
    flipped = validate_capture(tmp_path / "flipped")
    assert flipped.failed_checks == ["reprojection"], flipped.problems  # too little motion for the warp check
    assert flipped.checks["motion warp"].status == "skip"


def test_reprojection_that_cannot_tell_the_sign_is_skipped(tmp_path, monkeypatch):
    import capture_helpers

    monkeypatch.setattr(capture_helpers, "STEP", capture_helpers.STEP * 1e-4)  # ~6e-5 px per frame
    make_capture(tmp_path / "still", motion_sign=-1.0)
    report = validate_capture(tmp_path / "still")
    assert report.ok and report.checks["reprojection"].status == "skip", report.problems
    assert "reversed or scaled motion would pass too" in report.checks["reprojection"].skipped


def test_agreement_counts_pixels_that_tell_the_sign():
    expected = np.full((48, 64, 2), 0.1)
    fraction, _, pixels, signed = reprojection_agreement(-expected, expected)
    assert pixels == 48 * 64 and fraction == 0.0 and signed == 1.0  # 0.2 px off, tolerance 0.0083 + 2 % at 64 px
    _, _, _, signed = reprojection_agreement(expected * 1e-3, expected * 1e-3)
    assert signed == 0.0
