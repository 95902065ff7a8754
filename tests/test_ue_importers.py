"""Importers of existing Unreal dumps: real EXR folders in, a validated capture (contract 1) out."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from click.testing import CliRunner
from ue_formats import (
    HEADER,
    analytic_motion,
    colour,
    mrq_material,
    pixels_to_ndc,
    sign_bits,
    write_exr,
    write_intel_sample,
    write_mrq_frame,
)

from qw.cli import main
from qw.datagen.capture_format import META_FILE, load_meta, read_frame
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import DatasetManifest
from qw.datagen.plan import CaptureInfo, make_plan
from qw.datagen.validate import validate_capture
from qw.ue_capture.importers import import_capture, mrq_passes

ROOT = Path(__file__).resolve().parent.parent

W, H = 40, 24


def test_intel_sample_import_decodes_motion_and_offsets(tmp_path):
    frames = [180, 181, 182, 184]  # a gap before 184: its history is not frame 182
    offsets = {n: (0.25 * (-1) ** n, -0.125 + 0.01 * n) for n in frames}
    truth = write_intel_sample(tmp_path / "src", W, H, frames, offsets=offsets)
    shot = import_capture("intel-sample", tmp_path / "src", scene="Infiltrator", shot="s180", out=tmp_path / "cap",
                          progress=False)
    meta = load_meta(shot)
    assert meta.source_frames == frames and meta.camera_cuts == [3]
    assert (meta.width, meta.height) == (W, H) and meta.backend.name == "import:intel-sample"
    assert meta.jitter.sequence == "engine"
    np.testing.assert_allclose(meta.jitter_array(), [offsets[n] for n in frames], atol=1e-3)
    for i, n in enumerate(frames):
        np.testing.assert_allclose(read_frame(shot, "motion", i), truth[n], atol=1e-3)
    assert validate_capture(shot).ok


def test_intel_sample_stacked_blocks_need_full_size(tmp_path):
    src = tmp_path / "src"
    tile, t_frames, full = 16, 4, (64, 48)
    truth = {}
    for n in (3, 4):
        d = np.concatenate([analytic_motion(tile, tile, phase=k, x0=8, y0=20) for k in range(t_frames)], axis=0)
        truth[n] = d
        name = f"GDC_Landscape_01_PreTonemapHDRColor_{n:04d}.exr"
        stack = colour(tile, tile * t_frames, n)
        write_exr(src / "noaa" / name, colour(tile, tile * t_frames, n, 0.1), dtype=np.float16)  # aliased
        write_exr(src / "ssaa" / name, stack, dtype=np.float16)
        write_exr(src / "velocity" / name, sign_bits(pixels_to_ndc(d, *full)))  # NDC of the full frame
    with pytest.raises(QwError, match="stacked 4-frame block; pass the full frame size"):
        import_capture("intel-sample", src, scene="Kite", shot="b", out=tmp_path / "cap", progress=False)
    shot = import_capture("intel-sample", src, scene="Kite", shot="b", out=tmp_path / "cap", full_size=full,
                          sample_offsets=False, progress=False)
    meta = load_meta(shot)
    assert meta.frame_count == 8 and meta.camera_cuts == [4] and meta.jitter.sequence == "none"
    for i in range(8):
        n, t = (3, 4)[i // 4], i % 4
        np.testing.assert_allclose(read_frame(shot, "motion", i), truth[n][t * tile:(t + 1) * tile], atol=1e-3)


def test_mrq_import_separate_files_and_reference(tmp_path):
    src = tmp_path / "mrq"
    depth = np.full((H, W), 1234.5)
    truth = {}
    for n in range(5, 9):
        truth[n] = analytic_motion(W, H, phase=n)
        write_mrq_frame(src / "aliased", "Seq", n, W, H, motion=truth[n], depth_cm=depth)
        write_mrq_frame(src / "reference", "Seq", n, W, H, colour_only=True)
    # The motion encoding follows the pass: qw's velocity material holds NDC.
    shot = import_capture("mrq", src, scene="Kite", shot="a", out=tmp_path / "cap", progress=False)
    meta = load_meta(shot)
    assert meta.source_frames == [5, 6, 7, 8] and meta.depth_units == "m" and meta.jitter.sequence == "none"
    np.testing.assert_allclose(read_frame(shot, "depth", 2)[..., 0], 12.345, rtol=1e-6)
    np.testing.assert_allclose(read_frame(shot, "motion", 3), truth[8], atol=1e-3)
    assert validate_capture(shot).ok


def test_mrq_multilayer_stock_material(tmp_path):
    """One EXR per frame with FinalImage unlayered and the stock MotionVectors/WorldDepth as layers."""
    src = tmp_path / "dump"
    for n in (0, 1, 2):
        d = analytic_motion(W, H, phase=n)
        path = src / f"Shot.{n:04d}.exr"
        layers = {"": colour(W, H, n, 0.1)[..., :3],  # aliased: differs from the reference
                  "FinalImageMovieRenderQueue_MotionVectors": mrq_material(d, W, H),
                  "FinalImageMovieRenderQueue_WorldDepth": np.full((H, W, 3), 500.0)}
        planes = {(f"{ly}.{c}" if ly else c): np.ascontiguousarray(img[..., i], np.float32)
                  for ly, img in layers.items() for i, c in enumerate("RGB")}
        path.parent.mkdir(parents=True, exist_ok=True)
        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, planes).write(str(path))
        write_mrq_frame(tmp_path / "ref", "Shot", n, W, H, colour_only=True)
    with OpenEXR.File(str(src / "Shot.0001.exr"), header_only=True) as exr:  # channel names as stored
        assert {c.name for c in exr.header()["channels"]} >= {"R", "FinalImageMovieRenderQueue_MotionVectors.G"}
    kinds = mrq_passes(src)
    assert {kind: entry[2] for kind, entry in ((k, v[1]) for k, v in kinds.items())} == {
        "color": "FinalImage", "motion": "FinalImageMovieRenderQueue_MotionVectors",
        "depth": "FinalImageMovieRenderQueue_WorldDepth"}
    shot = import_capture("mrq", src, scene="S", shot="m", out=tmp_path / "cap", reference=tmp_path / "ref",
                          progress=False)
    np.testing.assert_allclose(read_frame(shot, "motion", 1), analytic_motion(W, H, phase=1), atol=1e-3)
    np.testing.assert_allclose(read_frame(shot, "depth", 0), 5.0)
    assert load_meta(shot).backend.settings["motion_encoding"] == "mrq-material"


def test_passes_qw_does_not_read_are_ignored_alike_in_files_and_layers(tmp_path, caplog):
    """'SceneDepthWorldUnits' is not depth: as its own file or as a layer it is skipped with a warning naming it,
    never guessed, and the import goes on (exit 0) instead of failing (exit 1) in one layout and not the other."""
    src = tmp_path / "mrq"
    for n in (1, 2):
        write_mrq_frame(src, "Seq", n, W, H, motion=analytic_motion(W, H), depth_cm=np.full((H, W), 100.0))
    expected = {kind: {n: entry[:1] for n, entry in frames.items()} for kind, frames in mrq_passes(src).items()}
    odd = src / "Seq.SceneDepthWorldUnits.0001.exr"
    write_exr(odd, np.full((H, W, 3), 100.0))
    layered = src / "Seq.FinalImageM_QW_Depth.0002.exr"  # the depth pass, now with an extra layer beside it
    planes = {"FinalImageM_QW_Depth.R": np.full((H, W), 100.0, np.float32),
              "SceneDepthWorldUnits.R": np.full((H, W), 7.0, np.float32)}
    OpenEXR.File(dict(HEADER), planes).write(str(layered))
    with caplog.at_level(logging.WARNING, logger="qw.ue_capture.importers"):
        found = mrq_passes(src)
    assert {kind: {n: entry[:1] for n, entry in frames.items()} for kind, frames in found.items()} == expected
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{odd}: ignoring pass(es) 'SceneDepthWorldUnits'") for m in warned)
    assert any(m.startswith(f"{layered}: ignoring pass(es) 'SceneDepthWorldUnits'") for m in warned)
    ref = tmp_path / "ref"
    for n in (1, 2):
        write_mrq_frame(ref, "Seq", n, W, H, colour_only=True)
    result = subprocess.run([sys.executable, "-c", "from qw.cli import main; main()", "datagen", "import", "--layout",
                             "mrq", str(src), "--reference", str(ref), "--scene", "Kite", "--shot", "a", "--out",
                             str(tmp_path / "cap")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and "ignoring pass(es) 'SceneDepthWorldUnits'" in result.stderr, result.stderr
    write_exr(src / "beauty_0001.exr", np.zeros((H, W, 3)))
    with pytest.raises(CaptureError, match=r"beauty_0001\.exr: not a per-frame Movie Render Queue file"):
        mrq_passes(src)


def test_missing_frames_and_invalid_result_are_clear_errors(tmp_path):
    src = tmp_path / "src"
    write_intel_sample(src, W, H, [1, 2, 3])
    (src / "vel" / "VIS_ArtDemo_P_PreTonemapHDRColor_0002.exr").unlink()
    with pytest.raises(CaptureError, match=r"vel: motion missing for frame\(s\) 2 \(1 of 3\)"):
        import_capture("intel-sample", src, scene="I", shot="x", out=tmp_path / "cap", progress=False)
    # NaN velocity: the import writes everything, then validation fails and the shot is left incomplete.
    bad = tmp_path / "bad"
    write_intel_sample(bad, W, H, [1, 2])
    write_exr(bad / "vel" / "VIS_ArtDemo_P_PreTonemapHDRColor_0002.exr", np.full((H, W, 3), np.nan))
    with pytest.raises(CaptureError, match="failed validation"):
        import_capture("intel-sample", bad, scene="I", shot="y", out=tmp_path / "cap", progress=False)
    assert not (tmp_path / "cap" / "I" / "y" / META_FILE).exists()
    # an infinite sample offset at pixel (0,0) names its file instead of writing Infinity into capture.json
    inf = tmp_path / "inf"
    write_intel_sample(inf, W, H, [1, 2], offsets={1: (0.25, 0.1), 2: (np.inf, 0.1)})
    with pytest.raises(CaptureError, match=r"noaa/VIS_ArtDemo_P_PreTonemapHDRColor_0002\.exr: the sample offset at "
                                           r"pixel \(0,0\) is \(inf, .*not finite"):
        import_capture("intel-sample", inf, scene="I", shot="z", out=tmp_path / "cap", progress=False)
    assert not (tmp_path / "cap" / "I" / "z" / META_FILE).exists()


@pytest.mark.parametrize("scene, shot", [("..", ".."), ("S", "../x"), ("<abs>", "s")])
def test_scene_and_shot_names_that_are_not_folder_names_are_refused(tmp_path, scene, shot):
    """Only `qw datagen import` checked the names: `import_capture(scene='..', shot='..')` wrote the capture two
    folders above `out`, an absolute scene wherever it points (here inside tmp_path)."""
    scene = str(tmp_path / "abs") if scene == "<abs>" else scene
    write_intel_sample(tmp_path / "src", W, H, [1, 2, 3])
    with pytest.raises(QwError, match="names must be single folder names"):
        import_capture("intel-sample", tmp_path / "src", scene=scene, shot=shot, out=tmp_path / "a" / "out",
                       progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_import_then_validate(tmp_path):
    write_intel_sample(tmp_path / "src", W, H, [10, 11, 12])
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "datagen", "import", "--layout", "intel-sample", str(tmp_path / "src"),
                                  "--scene", "Infiltrator", "--shot", "s10", "--out", str(tmp_path / "cap")])
    assert result.exit_code == 0, result.output
    shot = tmp_path / "cap" / "Infiltrator" / "s10"
    assert json.loads((shot / META_FILE).read_text())["frame_count"] == 3
    result = runner.invoke(main, ["-q", "datagen", "validate", str(shot)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["datagen", "import", "--layout", "intel-sample", str(tmp_path / "nope"),
                                  "--scene", "I", "--shot", "s", "--out", str(tmp_path / "cap")])
    assert result.exit_code == 2 and "source folder not found" in result.output


def test_colour_space_is_recorded_and_a_store_plan_refuses_to_mix_spaces(tmp_path):
    """Intel-sample frames are PreTonemapHDRColor, MRQ's FinalImage is after exposure and grading: one store, one
    space."""
    write_intel_sample(tmp_path / "intel", W, H, [1, 2, 3])
    for n in (1, 2, 3):
        write_mrq_frame(tmp_path / "mrq" / "aliased", "Seq", n, W, H, motion=analytic_motion(W, H), depth_cm=None)
        write_mrq_frame(tmp_path / "mrq" / "reference", "Seq", n, W, H, colour_only=True)
    intel = import_capture("intel-sample", tmp_path / "intel", scene="s", shot="a", out=tmp_path / "c",
                           progress=False)
    mrq = import_capture("mrq", tmp_path / "mrq", scene="s", shot="b", out=tmp_path / "c", progress=False)
    assert load_meta(intel).color_space == "ue-linear-pretonemap-hdr"
    assert load_meta(mrq).color_space == "ue-linear-final-hdr"
    dataset = DatasetManifest(name="d", frames=2, tile=16, total_blocks=2, scenes=[dict(scene="s", budget=2)])
    captures = [CaptureInfo(f"s/{p.name}", load_meta(p), p.name, "train") for p in (intel, mrq)]
    with pytest.raises(CaptureError, match=r"colour space mismatch: s/a holds 'ue-linear-pretonemap-hdr', s/b holds "
                                           r"'ue-linear-final-hdr'; one store holds one space"):
        make_plan(dataset, captures)
    assert make_plan(dataset, captures[1:]).num_blocks == 2
