"""Contract 1 (`qw-capture/1`) through `qw.datagen.capture_format`: real EXR files, metadata, atomic completion."""

from __future__ import annotations

import json

import numpy as np
import OpenEXR
import pytest
from capture_helpers import FRAMES, HEIGHT, WIDTH, make_capture

from qw.datagen.capture_format import (
    META_FILE,
    PASSES,
    CaptureMeta,
    find_captures,
    finish_capture,
    frame_intact,
    frame_files,
    frame_path,
    is_complete,
    load_meta,
    read_exr,
    read_frame,
    sha256_file,
    write_exr,
    write_frame,
)
from qw.datagen.errors import CaptureError

UINT_OF = {np.float16: np.uint16, np.float32: np.uint32}


def random_finite(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Random bit patterns of `dtype` (all exponents, signs, subnormals), non-finite ones replaced by zero."""
    uint = UINT_OF[dtype]
    bits = rng.integers(0, np.iinfo(uint).max, shape, dtype=uint, endpoint=True)
    values = bits.view(dtype)
    values[~np.isfinite(values)] = 0
    return values


@pytest.mark.parametrize("pass_name", PASSES)
def test_every_pass_round_trips_bit_exact(tmp_path, pass_name):
    spec = PASSES[pass_name]
    image = random_finite(np.random.default_rng(7), (HEIGHT, WIDTH, spec.num_channels), spec.dtype)
    path = write_frame(tmp_path, pass_name, 3, image)
    assert path == tmp_path / pass_name / "000003.exr"
    back = read_frame(tmp_path, pass_name, 3)
    assert back.dtype == spec.dtype and back.shape == image.shape
    np.testing.assert_array_equal(back.view(UINT_OF[spec.dtype]), image.view(UINT_OF[spec.dtype]))


@pytest.mark.parametrize("pass_name", PASSES)
def test_files_carry_contract_channels_types_and_lossless_zip(tmp_path, pass_name):
    spec = PASSES[pass_name]
    path = write_frame(tmp_path, pass_name, 0, np.ones((4, 5, spec.num_channels)))
    expected_type = OpenEXR.HALF if spec.dtype == np.float16 else OpenEXR.FLOAT
    with OpenEXR.File(str(path), separate_channels=True) as exr:
        assert exr.header()["compression"] == OpenEXR.ZIP_COMPRESSION
        channels = exr.channels()
        assert sorted(channels) == sorted(spec.channels)
        assert all(channels[c].type() == expected_type for c in spec.channels)
    assert [p.name for p in path.parent.iterdir()] == ["000000.exr"]  # the atomic write left no temp file


def test_write_exr_rejects_a_channel_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"expected H×W×3 for channels \('R', 'G', 'B'\), got \(4, 5, 2\)"):
        write_exr(tmp_path / "x.exr", np.ones((4, 5, 2)), ("R", "G", "B"), np.float16)


def test_read_exr_names_file_and_problem(tmp_path):
    path = write_frame(tmp_path, "depth", 0, np.ones((4, 5, 1)))
    with pytest.raises(CaptureError, match=r"000000\.exr: channels stored as float32, expected float16"):
        read_exr(path, ("Z",), np.float16)
    with pytest.raises(CaptureError, match=r"000000\.exr: missing channel\(s\) \['X'\]; file has \['Z'\]"):
        read_exr(path, ("X",))
    with pytest.raises(CaptureError, match=r"000001\.exr: missing file"):
        read_frame(tmp_path, "depth", 1)


def test_read_exr_names_the_stored_types_of_channels_of_mixed_types(tmp_path):
    """A motion file whose Y channel is uint32 (a damaged channel list) was reported as 'stored as float64': the
    type np.stack made of the mix, which no channel has."""
    path = tmp_path / "motion.exr"
    planes = {"X": np.zeros((4, 5), np.float32), "Y": np.zeros((4, 5), np.uint32)}
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, planes).write(str(path))
    with pytest.raises(CaptureError, match=r"motion\.exr: channels stored as float32 and uint32, expected float32$"):
        read_exr(path, ("X", "Y"), np.float32)


def test_finish_capture_checksums_every_file_and_writes_meta_last(tmp_path):
    shot = tmp_path / "scene" / "shot"
    meta = make_capture(shot)
    assert is_complete(shot)
    assert sorted(meta.checksums) == sorted(frame_files(shot, FRAMES)) and len(meta.checksums) == 4 * FRAMES
    assert all(meta.checksums[rel] == sha256_file(shot / rel) for rel in meta.checksums)
    assert load_meta(shot) == meta
    assert json.loads((shot / META_FILE).read_text())["format"] == "qw-capture/1"
    assert frame_intact(shot, FRAMES - 1, WIDTH, HEIGHT) and not frame_intact(shot, FRAMES, WIDTH, HEIGHT)
    assert not frame_intact(shot, 0, WIDTH + 1, HEIGHT)  # present but not this shot's size


def test_finish_capture_refuses_a_missing_frame_and_leaves_the_shot_incomplete(tmp_path):
    shot = tmp_path / "shot"
    meta = make_capture(shot)
    (shot / META_FILE).unlink()
    frame_path(shot, "motion", 2).unlink()
    with pytest.raises(CaptureError, match=r"motion/000002\.exr: missing file; cannot complete the capture"):
        finish_capture(shot, meta)
    assert not is_complete(shot)
    assert sorted(p.name for p in shot.iterdir()) == sorted(PASSES)  # no stray capture.json temp file


def test_find_captures_lists_only_complete_shots(tmp_path):
    make_capture(tmp_path / "a" / "s1", frames=2)
    make_capture(tmp_path / "a" / "s2", frames=2)
    write_frame(tmp_path / "b" / "unfinished", "color", 0, np.ones((2, 2, 3)))
    assert find_captures(tmp_path) == [tmp_path / "a" / "s1", tmp_path / "a" / "s2"]
    assert find_captures(tmp_path / "a" / "s2") == [tmp_path / "a" / "s2"]


def _meta_dict(**changes) -> dict:
    base = dict(format="qw-capture/1", scene="s", shot="t", backend={"name": "test"}, width=4, height=2, fps=30,
                frame_count=3, source_frames=[10, 11, 12], jitter={"sequence": "none"},
                reference={"samples": 4, "filter": "box"})
    return {**base, **changes}


def _cameras(view: list | None = None, nan_at: int | None = None) -> list[dict]:
    """Three camera frames (identity views unless `view` is given; frame `nan_at` with a NaN in its view)."""
    cameras = []
    for i in range(3):
        v = [row[:] for row in (view or np.eye(4).tolist())]
        if i == nan_at:
            v[0][0] = float("nan")
        cameras.append({"view": v, "projection": np.eye(4).tolist()})
    return cameras


def test_meta_derived_arrays():
    meta = CaptureMeta.model_validate(_meta_dict(camera_cuts=[2], jitter={"sequence": "halton23", "cycle": 8,
                                                                          "offsets": [[0.1, -0.2]] * 3}))
    assert meta.history_valid().tolist() == [False, True, False]
    assert meta.jitter_array().shape == (3, 2) and meta.jitter_array()[1].tolist() == pytest.approx([0.1, -0.2])
    assert not CaptureMeta.model_validate(_meta_dict()).jitter_array().any()


def test_engine_fields_are_optional_and_round_trip(tmp_path):
    """capture.json files written before the engine fields existed still load; new ones keep what they record."""
    old = _meta_dict()
    assert "engine" not in old and "offsets" not in old["reference"]
    (tmp_path / META_FILE).write_text(json.dumps(old))
    assert load_meta(tmp_path).engine is None and load_meta(tmp_path).reference.offsets == []
    new = _meta_dict(engine={"version": "4.27.2", "cvars": {"r.TemporalAAFilterSize": 1.0}},
                     reference={**old["reference"], "offsets": [[0.1, -0.2], [0.3, 0.4]]})
    (tmp_path / META_FILE).write_text(json.dumps(new))
    meta = load_meta(tmp_path)
    assert meta.engine.cvars == {"r.TemporalAAFilterSize": 1.0} and meta.reference.offsets[1] == (0.3, 0.4)


@pytest.mark.parametrize("changes, message", [
    ({"source_frames": [1, 2]}, "source_frames has 2 entries, frame_count is 3"),
    ({"camera_cuts": [5]}, "camera_cuts [5] outside 0..2"),
    ({"width": 0}, "field width: Input should be greater than 0"),
    ({"colour": 1}, "field colour: Extra inputs are not permitted"),
    ({"format": "qw-capture/x"}, "format 'qw-capture/x' is not qw-capture/<version>"),
    ({"format": "other/1"}, "format 'other/1' is not qw-capture/<version>"),
    # json.loads reads NaN and Infinity: they must not reach the store's jitter or the reprojection check
    ({"jitter": {"sequence": "engine", "offsets": [[0.1, 0.2], [float("nan"), 0.0], [0.3, 0.1]]}},
     "field jitter.offsets.1.0: Input should be a finite number"),
    ({"fps": float("inf")}, "field fps: Input should be a finite number"),
    ({"cameras": _cameras(nan_at=1)}, "field cameras.1.view.0.0: Input should be a finite number"),
    # the reprojection check reshapes and inverts these: a bad one is a capture.json problem, not a traceback
    ({"cameras": _cameras(view=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])},
     "field cameras.0: Value error, view is not a 4×4 matrix"),
    ({"cameras": _cameras(view=[[0.0] * 4] * 4)}, "field cameras.0: Value error, view matrix is singular"),
])
def test_load_meta_names_file_field_and_problem(tmp_path, changes, message):
    (tmp_path / META_FILE).write_text(json.dumps(_meta_dict(**changes)))
    with pytest.raises(CaptureError) as info:
        load_meta(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / META_FILE}: ") and message in str(info.value)


def test_load_meta_of_deeply_nested_json_is_one_line(tmp_path):
    (tmp_path / META_FILE).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(CaptureError, match="capture.json: not valid JSON \\(nested too deeply\\)"):
        load_meta(tmp_path)
