"""Data-side faults that used to pass silently or end in a traceback: checks that one edited attribute switched off,
a damaged checksum table reported complete, duplicated dataset entries, oversized budgets, hostile capture options
and concurrent builds. Every `qw` command runs as a real process; stores are built by the real builder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from blocks_helpers import capture_meta, dataset, write_dataset, write_scene_manifest, write_shot
from cli_helpers import one_line_error
from test_faults_store import built, chunk, flip_bytes, qw, store  # noqa: F401  (fixtures and helpers)

from qw.datagen.block_store import CHECKSUMS, open_store
from qw.datagen.errors import QwError

# ----------------------------------------------------------------------------------------------- integrity


def _set_attribute(store: Path, key: str, value) -> None:
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"][key] = value
    path.write_text(json.dumps(meta))


def test_a_store_that_carries_checksums_is_checked_whatever_its_format_says(store):
    """Editing `format` to qw-blocks/1 used to switch every check off: a damaged store read as intact."""
    flip_bytes(chunk(store, "color", 2))
    _set_attribute(store, "format", "qw-blocks/1")
    for command in (("verify", str(store)), ("inspect", str(store)),
                    ("preview", str(store), "--block", "2", "--out", str(store.parent / "p.png"))):
        result = qw("datagen", *command)
        assert "intact" not in result.stdout and "complete: yes" not in result.stdout, (command, result.stdout)
        assert result.returncode == 2 and "changed after it was written" in one_line_error(result), command
    assert not (store.parent / "p.png").exists()


def test_a_real_version_1_store_without_checksums_still_reads(store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]
    shutil.rmtree(store / CHECKSUMS)  # a version 1 store has no checksum table
    s = open_store(str(store))
    assert not s.verified and s.read_block(0, ("color",))["color"].shape == (8, 3, 32, 32)
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 0 and "records no checksums" in result.stdout, result.stdout + result.stderr


def test_a_version_1_label_with_a_checksum_table_but_no_record_is_refused(store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]  # the table is still there: the record was removed, not absent by design
    with pytest.raises(QwError, match="records no checksums"):
        open_store(str(store))


@pytest.mark.parametrize("value", [None, "crc32c", {"algorithm": "crc32c"}, {"arrays": [], "descriptions": {}}])
def test_an_integrity_attribute_that_is_not_a_record_is_one_line(store, value):
    _set_attribute(store, "integrity", value)
    for command in ("verify", "inspect"):
        stderr = one_line_error(qw("datagen", command, str(store)))
        assert "integrity attribute is not a checksum record" in stderr, stderr


def test_inspect_does_not_call_a_store_complete_when_its_checksum_table_lost_a_chunk(store):
    next((store / CHECKSUMS).glob("c.*")).unlink()
    result = qw("datagen", "inspect", str(store))
    assert result.returncode == 0, result.stderr
    assert "complete: NO (" in result.stdout and "array 'checksum' does not match its recorded checksum" \
        in result.stdout, result.stdout
    assert qw("datagen", "verify", str(store)).returncode == 1


# ----------------------------------------------------------------------------------------------- budgets


def test_a_scene_listed_twice_in_a_dataset_manifest_is_refused_naming_both(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\ntotal_blocks: 6\nscenes:\n  - {scene: builtin_fence, budget: 3}\n"
                    "  - {scene: Builtin Fence, budget: 3}\n")
    stderr = one_line_error(qw("datagen", "plan", "--dataset", str(path), "--captures", str(tmp_path)))
    assert str(path) in stderr and "scene 'builtin_fence' is listed more than once" in stderr, stderr


def _infos(frames: int, width: int, height: int):
    from qw.datagen.plan import CaptureInfo

    return [CaptureInfo("a/s1", capture_meta("a", "s1", frames, width, height), "sha", "train")]


def test_a_budget_past_the_distinct_blocks_of_a_scene_is_refused():
    from qw.datagen.plan import make_plan

    # 24 frames = 3 windows of 8; a 40×36 frame holds 9×5 = 45 positions of a 32-pixel tile: 135 distinct blocks
    assert make_plan(dataset({"a": 135}), _infos(24, 40, 36)).num_blocks == 135
    with pytest.raises(QwError, match=r"budget 136 is more than the 135 distinct blocks .*3 window\(s\) of 8 frames"):
        make_plan(dataset({"a": 136}), _infos(24, 40, 36))
    with pytest.raises(QwError, match="budget 100000 is more than the 135 distinct"):
        make_plan(dataset({"a": 100000}), _infos(24, 40, 36))
    # with 4 candidates per block, each block needs 4 distinct positions: 3 × ⌊45 / 4⌋ = 33
    with pytest.raises(QwError, match=r"budget 34 is more than the 33 distinct .*4 candidate"):
        make_plan(dataset({"a": 34}, candidates=4), _infos(24, 40, 36))


def test_a_budget_whose_blocks_must_overlap_is_warned_with_the_counts(caplog):
    from qw.datagen.plan import make_plan

    # 96×64 frames hold 3×2 = 6 disjoint 32-pixel tiles per window, 18 over 3 windows
    make_plan(dataset({"a": 18}), _infos(24, 96, 64))
    assert "overlap" not in caplog.text
    plan = make_plan(dataset({"a": 100}), _infos(24, 96, 64))
    assert "budget 100 is more than the 18 blocks that share no pixel" in caplog.text, caplog.text
    positions = [(t.start, *p) for t in plan.tasks for p in t.positions[:, 0].tolist()]
    assert len(set(positions)) == 100  # overlapping, never repeated


# ----------------------------------------------------------------------------------------------- capture


def test_a_resolution_past_the_renderer_limit_is_refused_before_anything_is_written(tmp_path):
    stderr = one_line_error(qw("datagen", "capture", "--scene", "builtin_fence", "--shot", "dolly", "--frames",
                               "0:1", "--out", str(tmp_path / "out"), "--resolution", "100000x100000"))
    assert "100000x100000" in stderr and "at most 16384 pixels per side" in stderr, stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- builds


@pytest.fixture
def small_build(tmp_path) -> dict:
    captures, manifests = tmp_path / "captures", tmp_path / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train")}, (64, 48))
    write_shot(captures, capture_meta("gamma", "a", 16, 64, 48))
    ds = write_dataset(tmp_path / "ds.yaml", dataset({"gamma": 3}))
    args = ["-q", "datagen", "build", "--dataset", str(ds), "--captures", str(captures), "--workers", "1"]
    return {"args": args, "env": {"QW_MANIFESTS": str(manifests)}, "root": tmp_path}


def _qw_env(*args: str, env: dict, cwd: Path | None = None):
    import os
    import subprocess

    from test_faults_store import QW

    return subprocess.run([QW, *args], capture_output=True, text=True, timeout=180, env={**os.environ, **env},
                          cwd=cwd)


def test_a_second_build_of_a_store_is_refused_while_the_first_holds_it(small_build):
    from qw.datagen.tile import build_lock

    store = str(small_build["root"] / "s.zarr")
    with build_lock(store):  # what a running build holds
        second = _qw_env(*small_build["args"], "--store", store, "--overwrite", env=small_build["env"])
    assert "another build is writing this store" in one_line_error(second), second.stderr
    assert not Path(store).exists()
    assert _qw_env(*small_build["args"], "--store", store, env=small_build["env"]).returncode == 0  # released


def test_a_group_left_by_a_raced_creation_is_rebuilt(small_build):
    """Two `--overwrite` builds racing (before builds took a lock) left a zarr group without attributes holding
    some of the store's arrays; neither `build` nor `--overwrite` could recover it."""
    store = small_build["root"] / "s.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("color", shape=(4,), dtype="float16")
    group.create_array("_tasks", shape=(4,), dtype="int16")
    result = _qw_env(*small_build["args"], "--store", str(store), env=small_build["env"])
    assert result.returncode == 0, result.stderr
    assert qw("datagen", "verify", str(store)).returncode == 0


def test_a_foreign_zarr_group_is_still_never_overwritten(small_build):
    store = small_build["root"] / "s.zarr"
    zarr.open_group(str(store), mode="w").create_array("mine", shape=(4,), dtype="int8")
    stderr = one_line_error(_qw_env(*small_build["args"], "--store", str(store), "--overwrite",
                                    env=small_build["env"]))
    assert "not a qw block store" in stderr and (store / "mine").is_dir()


def test_a_relative_store_on_a_cluster_started_elsewhere_is_built_where_the_client_means(small_build):
    """Workers of an existing cluster run in their own working directory: a relative --store used to be opened
    there and fail with 'not a qw block store (s.zarr does not exist)'."""
    import subprocess
    import sys
    import time

    from cli_helpers import free_port

    elsewhere = small_build["root"] / "elsewhere"
    elsewhere.mkdir()
    dask, port = str(Path(sys.executable).with_name("dask")), free_port()
    procs = [subprocess.Popen([dask, "scheduler", "--port", str(port), "--no-dashboard"], cwd=elsewhere,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)
        procs.append(subprocess.Popen([dask, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                       "--no-dashboard"], cwd=elsewhere, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        args = [a for a in small_build["args"] if a not in ("--workers", "1")]
        result = _qw_env(*args, "--store", "s.zarr", "--scheduler", f"tcp://127.0.0.1:{port}",
                         env={**small_build["env"], "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "20s"},
                         cwd=small_build["root"])
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
    assert result.returncode == 0, result.stderr
    assert qw("datagen", "verify", str(small_build["root"] / "s.zarr")).returncode == 0
    assert not (elsewhere / "s.zarr").exists()


def test_a_worker_that_cannot_open_the_store_says_why(tmp_path):
    import numpy as np

    from qw.datagen.tile import TaskSpec, run_task

    spec = TaskSpec(str(tmp_path / "nowhere.zarr"), None, "digest", 0, str(tmp_path), 64, 48, 0, 8, 32, 0,
                    np.zeros((1, 1, 2), np.int32), 1)
    with pytest.raises(QwError, match=r"a Dask worker on .* cannot open the store: .*nowhere\.zarr.*every worker "
                                      r"must reach the store"):
        run_task(spec)


# ----------------------------------------------------------------------------------------------- contract 1


def _read_channels(path: Path) -> dict:
    """Every channel of an EXR by its name in the file, read with OpenEXR directly (not qw's channel table)."""
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as exr:
        header = exr.header()
        return {"compression": header["compression"], **{n: c.pixels.copy() for n, c in exr.channels().items()}}


def test_channel_meanings_on_a_builtin_capture_with_a_known_camera_move(tmp_path):
    """The camera trucks right by TX and rises by TY per frame, level, looking down −Z. For a pure translation
    every static point moves on screen by −f·t·H / (2·depth) (f = 1/tan(fov_y/2)), so with planar depth
    motion X · depth = −f·TX·H/2 (left: content moves against the camera) and motion Y · depth = +f·TY·H/2 (down:
    +y is down) at every pixel, the corners included; a radial distance would break it off-axis, a jittered motion
    would blur it, a swapped or flipped channel would fail its sign."""
    import math

    import numpy as np
    import yaml

    from qw.capture import capture_scene

    tx, ty, fov, width, height = 0.1, 0.05, 55.0, 128, 96
    manifest = tmp_path / "truck.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "truck", "backend": "builtin", "seed": 3,
        "capture": {"resolution": [width, height], "fps": 30, "reference_samples": 4},
        "builtin": {"builder": "fence", "params": {"fov": fov, "camera": [
            {"frame": 0, "eye": [-2.0, 1.0, 6.0], "target": [-2.0, 1.0, 0.0]},
            {"frame": 10, "eye": [-2.0 + 10 * tx, 1.0 + 10 * ty, 6.0], "target": [-2.0 + 10 * tx, 1.0 + 10 * ty, 0.0]},
        ]}},
        "shots": [{"name": "s", "start": 0, "end": 10}]}))
    shot, = capture_scene(str(manifest), tmp_path / "captures", frames="0:3", progress=False)
    f = 1 / math.tan(math.radians(fov) / 2)
    for frame in (1, 2):
        motion = _read_channels(shot / "motion" / f"{frame:06d}.exr")
        depth = _read_channels(shot / "depth" / f"{frame:06d}.exr")
        color = _read_channels(shot / "color" / f"{frame:06d}.exr")
        assert sorted(k for k in motion if k != "compression") == ["X", "Y"] and motion["X"].dtype == np.float32
        assert sorted(k for k in depth if k != "compression") == ["Z"] and depth["Z"].dtype == np.float32
        assert {"R", "G", "B"} <= color.keys() and color["R"].dtype == np.float16
        assert "ZIP" in str(motion["compression"]) and "ZIP" in str(color["compression"])  # lossless
        near = depth["Z"] < 40  # the sky dome is far away; the rolling ball is the only mover
        x_const, y_const = motion["X"] * depth["Z"], motion["Y"] * depth["Z"]
        for got, want in ((x_const, -f * tx * height / 2), (y_const, f * ty * height / 2)):
            share = np.mean(np.abs(got[near] - want) <= 0.01 * abs(want))
            assert share > 0.95, (frame, want, np.percentile(got[near], [5, 50, 95]), share)
        corners = np.zeros_like(near)
        corners[:12, :12] = corners[:12, -12:] = corners[-12:, :12] = corners[-12:, -12:] = True
        assert np.median(x_const[near & corners]) == pytest.approx(-f * tx * height / 2, rel=0.01)


def test_an_integrity_record_alone_keeps_the_checks_on(store):
    _set_attribute(store, "format", "qw-blocks/1")
    shutil.rmtree(store / CHECKSUMS)  # the record is still there: this store was written with checksums
    assert "changed after it was written" in one_line_error(qw("datagen", "verify", str(store)))


def test_a_complete_attribute_that_is_not_true_is_not_complete(store):
    _set_attribute(store, "complete", "false")  # truthy as a string
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 1 and "store is incomplete" in result.stdout, result.stdout + result.stderr
