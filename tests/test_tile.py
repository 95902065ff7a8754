"""Builder end to end on real EXR captures, a real Dask LocalCluster and a real Zarr store (local and S3)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from blocks_helpers import capture_meta, dataset, expected_crop, marker_chunks, write_dataset, write_scene_manifest, \
    write_shot
from qw.cli import main
from qw.datagen.block_store import IMAGE_ARRAYS, open_store
from qw.datagen.capture_format import CaptureMeta, META_FILE, frame_path, load_meta, read_frame, write_frame
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.inspect_store import inspect_report
from qw.datagen.manifests import DatasetManifest
from qw.datagen.plan import plan_from_files
from qw.datagen.tile import MARKERS, build_store

QW = str(Path(sys.executable).with_name("qw"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two scenes, four shots (one with a cut, one in 'val', one in 'test'), 32×32×8 blocks, 3 candidates."""
    root = tmp_path_factory.mktemp("synthetic")
    captures, manifests = root / "captures", root / "manifests"
    metas = [capture_meta("alpha", "s1", 40, 160, 96, cuts=[17]), capture_meta("alpha", "s2", 24, 160, 96),
             capture_meta("alpha", "t", 16, 160, 96), capture_meta("beta", "s1", 33, 128, 80)]
    write_scene_manifest(manifests, "alpha", {"s1": (40, "train"), "s2": (24, "val"), "t": (16, "test")})
    write_scene_manifest(manifests, "beta", {"s1": (33, "train")})
    for meta in metas:
        write_shot(captures, meta)
    ds = dataset({"alpha": 60, "beta": 24}, candidates=3).model_copy(update={"splits": ["train", "val"]})
    return {"captures": captures, "manifests": manifests, "dataset": ds,
            "dataset_file": write_dataset(root / "dataset.yaml", ds), "metas": {(m.scene, m.shot): m for m in metas}}


def check_store_matches_sources(url: str, synthetic: dict, storage_options: dict | None = None,
                                ds: DatasetManifest | None = None) -> None:
    """Every block equals the crop of its source frames (bit-exact float16), with the right jitter, history
    flags and split; the content filter kept the most aliased candidate; no block lost or duplicated."""
    ds = ds or synthetic["dataset"]
    store = open_store(url, storage_options=storage_options)
    plan = plan_from_files(ds, synthetic["captures"], manifests_root=synthetic["manifests"])
    assert store.attrs["plan_digest"] == plan.digest()
    assert store.num_blocks == plan.num_blocks == ds.total_blocks
    origins = store.origins()
    planned = {(t.shot, t.start, tuple(p)) for t in plan.tasks for block in t.positions for p in block}
    assert len({tuple(o[1:]) for o in origins}) == len(origins), "duplicate block"
    shots = store.attrs["shots"]
    for i, (scene, shot, start, y, x) in enumerate(origins):
        info = shots[shot]
        assert store.attrs["scenes"][scene]["name"] == info["scene"]
        assert (shot, start, (y, x)) in planned
        meta: CaptureMeta = synthetic["metas"][info["scene"], info["shot"]]
        folder = synthetic["captures"] / info["path"]
        block = store.read_block(i, (*IMAGE_ARRAYS, "jitter", "history_valid"))
        for name in IMAGE_ARRAYS:
            expect = expected_crop(folder, name, start, 8, y, x, 32)
            assert block[name].dtype == np.float16
            np.testing.assert_array_equal(block[name].view(np.uint16), expect.view(np.uint16), err_msg=name)
        np.testing.assert_array_equal(block["jitter"], meta.jitter_array()[start:start + 8])
        assert block["history_valid"].tolist() == [False] + [True] * 7
        assert not [c for c in meta.camera_cuts if start < c < start + 8]
        # the kept candidate is the most aliased of its block's candidates
        task = next(t for t in plan.tasks if i in t.block_indices)
        candidates = task.positions[i - task.first_block]
        scores = [aliasing(expected_crop(folder, "color", start, 8, cy, cx, 32),
                           expected_crop(folder, "reference", start, 8, cy, cx, 32), cy, cx) for cy, cx in candidates]
        assert (y, x) == tuple(candidates[int(np.argmax(scores))])
    assert sorted(store.split_indices("val").tolist()) == [i for i, o in enumerate(origins)
                                                          if shots[o[1]]["split"] == "val"]
    assert {s["split"] for s in shots} <= set(ds.splits)  # the test shot is never drawn from


def aliasing(color: np.ndarray, reference: np.ndarray, y: int, x: int) -> float:
    """How aliased a (T, C, h, w) crop at (y, x) is, by the content filter's rule: mean |color − reference| after
    Reinhard tone mapping, over the pixels at even frame coordinates."""
    c, r = (np.maximum(a[..., y % 2::2, x % 2::2].astype(np.float64), 0) for a in (color, reference))
    return float(np.abs(c / (1 + c) - r / (1 + r)).mean())


def test_build_with_four_workers_every_block_exact(synthetic, tmp_path):
    url = str(tmp_path / "blocks.zarr")
    build_store(synthetic["dataset"], synthetic["captures"], url, workers=4, progress=False,
                manifests_root=synthetic["manifests"])
    check_store_matches_sources(url, synthetic)
    assert (zarr.open_group(url)[MARKERS][:, 0] >= 0).all()
    # a rerun of a complete store changes nothing, and removes what a write killed half-way leaves behind
    before = checksums(Path(url))
    chunk = next((Path(url) / "color").glob("c.*"))
    chunk.with_name(chunk.name + ".0123abcd.partial").write_bytes(b"half a chunk")
    build_store(synthetic["dataset"], synthetic["captures"], url, workers=1, progress=False,
                manifests_root=synthetic["manifests"])
    assert checksums(Path(url)) == before

    runner = CliRunner()
    report = runner.invoke(main, ["datagen", "inspect", url])
    assert report.exit_code == 0, report.output
    assert "complete: yes" in report.output and "alpha/s2 (val)" in report.output and "blocks:     84" in report.output
    for suffix, shape in ((".png", (8 * 32, 4 * 32, 3)), (".gif", (8, 32, 4 * 32, 3)), (".mp4", (8, 32, 4 * 32, 3))):
        out = tmp_path / f"b{suffix}"
        result = runner.invoke(main, ["datagen", "preview", url, "--block", "5", "--out", str(out)])
        assert result.exit_code == 0, result.output
        import imageio.v3 as iio
        image = iio.imread(out) if suffix == ".png" else iio.imread(out, index=None)
        assert image.shape == shape and image.std() > 0


def checksums(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def run_build(synthetic: dict, store: Path, kill_when=None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`qw datagen build` in its own process group; `kill_when(store)` → True triggers SIGKILL of the group."""
    env = {**os.environ, "QW_MANIFESTS": str(synthetic["manifests"])}
    proc = subprocess.Popen([QW, "-q", "datagen", "build", "--dataset", str(synthetic["dataset_file"]),
                             "--captures", str(synthetic["captures"]), "--store", str(store), "--workers", "2",
                             *extra], env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    if kill_when is None:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()
        return proc
    while proc.poll() is None and not kill_when(store):
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):  # the build may have finished before the kill
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc


def test_sigkill_at_random_points_then_rerun_is_byte_identical(synthetic, tmp_path):
    clean = tmp_path / "clean.zarr"
    t0 = time.monotonic()
    run_build(synthetic, clean)
    duration = time.monotonic() - t0
    reference = checksums(clean)
    rng = random.Random(5)
    killers = [
        lambda: (lambda s, t=time.monotonic() + rng.uniform(0.3, 1.0) * duration: time.monotonic() >= t),
        lambda: (lambda s, k=rng.randint(1, 4): len(marker_chunks(s)) >= k),  # mid-way through the tasks
        lambda: (lambda s, k=rng.randint(6, 9): len(marker_chunks(s)) >= k),  # near the end
    ]
    n_tasks = zarr.open_group(str(clean))[MARKERS].shape[0]
    left_partial = []
    for trial, killer in enumerate(killers):
        store = tmp_path / f"killed{trial}.zarr"
        run_build(synthetic, store, kill_when=killer())
        left_partial.append(0 < len(marker_chunks(store)) < n_tasks)
        if left_partial[-1]:
            assert f"complete: NO (build unfinished: {len(marker_chunks(store))} of {n_tasks} windows" in \
                inspect_report(str(store))
        run_build(synthetic, store)
        assert checksums(store) == reference, f"trial {trial}: store differs from the clean build"
    assert any(left_partial), "no kill landed while tasks were running"


def test_sharded_store_reads_verifies_and_resumes_a_killed_build_byte_identically(synthetic, tmp_path):
    sharded = ("--inner-chunk", "16")
    clean = tmp_path / "clean.zarr"
    run_build(synthetic, clean, extra=sharded)
    color = open_store(str(clean)).array("color")
    assert color.shards == (1, 8, 3, 32, 32) and color.chunks == (1, 8, 3, 16, 16)
    check_store_matches_sources(str(clean), synthetic)
    verify = subprocess.run([QW, "datagen", "verify", str(clean)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    reference = checksums(clean)
    n_tasks = zarr.open_group(str(clean))[MARKERS].shape[0]
    killed = tmp_path / "killed.zarr"
    for _ in range(3):  # a kill that lands mid-build (not before the first or after the last window)
        shutil.rmtree(killed, ignore_errors=True)
        run_build(synthetic, killed, kill_when=lambda s: len(marker_chunks(s)) >= 3, extra=sharded)
        if 0 < len(marker_chunks(killed)) < n_tasks:
            break
    assert 0 < len(marker_chunks(killed)) < n_tasks
    env = {**os.environ, "QW_MANIFESTS": str(synthetic["manifests"])}
    other = subprocess.run([QW, "datagen", "build", "--dataset", str(synthetic["dataset_file"]), "--captures",
                            str(synthetic["captures"]), "--store", str(killed)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 2 and "layout is sharded, 16² inner chunks, this build asks for one chunk per block" \
        in other.stderr, other.stderr
    run_build(synthetic, killed, extra=sharded)
    assert checksums(killed) == reference


def test_s3_store_on_local_moto_server(synthetic, s3_options):
    url, ds = "s3://bucket/blocks.zarr", dataset({"beta": 10}, candidates=2)
    build_store(ds, synthetic["captures"], url, workers=2, storage_options=s3_options, progress=False,
                manifests_root=synthetic["manifests"])
    check_store_matches_sources(url, synthetic, s3_options, ds)
    # the trainer's dataset reads the same blocks over HTTP
    from qw.training.data import BlockDataset

    loader = torch.utils.data.DataLoader(BlockDataset(url, storage_options=s3_options), batch_size=4)
    batch = next(iter(loader))
    store = open_store(url, storage_options=s3_options)
    for i in range(4):
        np.testing.assert_array_equal(batch["color"][i].numpy(), store.read_block(i, ("color",))["color"])


# ----------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def one_shot(tmp_path):
    """A fresh small capture (one scene, two train shots) that a test may break."""
    captures, manifests = tmp_path / "captures", tmp_path / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train"), "b": (16, "train")})
    metas = [capture_meta("gamma", "a", 16, 64, 48), capture_meta("gamma", "b", 16, 64, 48)]
    for meta in metas:
        write_shot(captures, meta)
    return {"captures": captures, "manifests": manifests, "dataset": dataset({"gamma": 6}),
            "store": tmp_path / "blocks.zarr", "metas": metas}


def build_fails(case: dict, error: type, match: str, store: Path | None = None) -> None:
    store = store or case["store"]
    with pytest.raises(error, match=match):
        build_store(case["dataset"], case["captures"], str(store), workers=1, progress=False,
                    manifests_root=case["manifests"])
    if (store / "zarr.json").is_file() and "qw-blocks" in (store / "zarr.json").read_text():
        assert not open_store(str(store), require_complete=False).complete


def test_incomplete_capture(one_shot):
    (one_shot["captures"] / "gamma" / "a" / META_FILE).unlink()
    build_fails(one_shot, CaptureError, r"gamma/a/capture.json: missing.*incomplete")


def test_missing_frame(one_shot):
    frame_path(one_shot["captures"] / "gamma" / "b", "motion", 11).unlink()
    build_fails(one_shot, CaptureError, r"gamma/b/motion/000011.exr: missing frame")


def test_resolution_mismatch_between_shots(one_shot):
    write_shot(one_shot["captures"], capture_meta("gamma", "b", 16, 72, 48))
    build_fails(one_shot, CaptureError, r"resolution mismatch between shots of scene 'gamma'")


def test_frame_of_another_size_than_capture_json(one_shot):
    for shot in ("a", "b"):  # whichever window the plan picked, one frame of each shot is broken
        write_frame(one_shot["captures"] / "gamma" / shot, "depth", 9, np.ones((40, 64, 1)))
        write_frame(one_shot["captures"] / "gamma" / shot, "depth", 2, np.ones((40, 64, 1)))
    build_fails(one_shot, CaptureError, r"depth/00000[29].exr: frame is 64×40, capture.json says 64×48")


def build_through_cli(one_shot, tmp_path) -> subprocess.CompletedProcess:
    """`qw -q datagen build` of the one-shot dataset, in its own process (one worker)."""
    ds_file = write_dataset(tmp_path / "ds.yaml", one_shot["dataset"])
    env = {**os.environ, "QW_MANIFESTS": str(one_shot["manifests"])}
    return subprocess.run([QW, "-q", "datagen", "build", "--dataset", str(ds_file), "--captures",
                           str(one_shot["captures"]), "--store", str(one_shot["store"]), "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_nan_in_a_frame_fails_through_the_cli_in_one_line(one_shot, tmp_path):
    for shot in ("a", "b"):
        for i in range(16):
            image = np.ones((48, 64, 3))
            image[5, 7] = np.nan
            write_frame(one_shot["captures"] / "gamma" / shot, "reference", i, image)
    result = build_through_cli(one_shot, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "reference/0000" in result.stderr and "NaN/inf" in result.stderr
    assert not open_store(str(one_shot["store"]), require_complete=False).complete


def test_a_frame_changed_after_capture_fails_through_the_cli_in_one_line(one_shot, tmp_path):
    """A frame edited after capture.json recorded its sha256 still decodes (finite, right size): the build refuses
    it by its checksum, as `qw datagen validate` does, instead of tiling it."""
    for shot in ("a", "b"):  # whichever windows the plan picked, every colour frame is changed
        for i in range(16):
            image = read_frame(one_shot["captures"] / "gamma" / shot, "color", i)
            image[3, 4] += 1
            write_frame(one_shot["captures"] / "gamma" / shot, "color", i, image)
    result = build_through_cli(one_shot, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert re.search(r"gamma/[ab]/color/0000\d\d\.exr: sha256 does not match capture\.json \(file changed after "
                     r"capture\)$", result.stderr.strip()), result.stderr
    assert not open_store(str(one_shot["store"]), require_complete=False).complete


def test_a_frame_without_a_recorded_checksum_is_refused(one_shot):
    """A capture.json that records no sha256 for a frame leaves it unverifiable: refused, as validate does."""
    for shot in ("a", "b"):
        meta = load_meta(one_shot["captures"] / "gamma" / shot)
        checksums = {rel: s for rel, s in meta.checksums.items() if not rel.startswith("depth/")}
        text = json.dumps(meta.model_copy(update={"checksums": checksums}).model_dump(mode="json"))
        (one_shot["captures"] / "gamma" / shot / META_FILE).write_text(text)
    build_fails(one_shot, CaptureError, r"depth/0000\d\d\.exr: no checksum recorded in capture\.json")


def test_negative_infinite_depth_fails_while_positive_infinity_is_sky(one_shot):
    """+inf depth is sky (clipped to 65504); −inf is a broken render, as NaN is, not a depth of −65504."""
    for shot in ("a", "b"):
        for i in range(16):
            depth = np.ones((48, 64, 1), np.float32)
            depth[0, 0], depth[1, 1] = np.inf, -np.inf
            write_frame(one_shot["captures"] / "gamma" / shot, "depth", i, depth)
    build_fails(one_shot, CaptureError, r"depth/0000\d\d\.exr: 1 NaN/inf value\(s\) in the frame")


def test_unwritable_store(one_shot, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    build_fails(one_shot, QwError, r"not-a-folder/blocks.zarr: cannot create the block store", blocker / "blocks.zarr")


def test_file_url_store_builds_in_a_new_folder_and_reads_back(one_shot, tmp_path):
    """`--store file:///abs/path`: fsspec's local filesystem made no parent folders, so the first write failed."""
    url = f"file://{tmp_path}/new/folder/blocks.zarr"
    built = build_store(one_shot["dataset"], one_shot["captures"], url, workers=1, progress=False,
                        manifests_root=one_shot["manifests"])
    store = open_store(url)
    assert store.complete and store.num_blocks == built.num_blocks == 6
    np.testing.assert_array_equal(store.read_block(0, ("color",))["color"],
                                  open_store(str(tmp_path / "new/folder/blocks.zarr")).read_block(0, ("color",))["color"])


def test_store_of_another_format_is_left_alone(one_shot):
    zarr.open_group(str(one_shot["store"]), mode="w", attributes={"format": "someone-else/3"})
    build_fails(one_shot, QwError, r"not a qw block store \(format attribute is 'someone-else/3'\)")
    assert zarr.open_group(str(one_shot["store"])).attrs["format"] == "someone-else/3"
    plain = one_shot["store"].parent / "notes"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    build_fails(one_shot, QwError, r"notes: not a qw block store", plain)
    assert (plain / "keep.txt").read_text() == "mine"


def test_store_of_another_plan_needs_overwrite_on_an_existing_cluster(one_shot):
    """--scheduler: builds run on a cluster that outlives them; the worker that wrote the old store (32-pixel
    tiles) must not write the new one at the same URL (16-pixel tiles) through stale array handles."""
    from distributed import LocalCluster

    def build(ds, **kw):
        return build_store(ds, one_shot["captures"], str(one_shot["store"]), progress=False,
                           scheduler=cluster.scheduler_address, manifests_root=one_shot["manifests"], **kw)

    small_tiles = dataset({"gamma": 6}, tile=16)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        assert build(one_shot["dataset"]).attrs["block_shape"] == [8, 32, 32]
        with pytest.raises(QwError, match="built from another plan"):
            build(small_tiles)
        store = build(small_tiles, overwrite=True)
    assert store.complete and store.attrs["block_shape"] == [8, 16, 16]
    for i, (_, shot, start, y, x) in enumerate(store.origins()):
        folder = one_shot["captures"] / store.attrs["shots"][shot]["path"]
        np.testing.assert_array_equal(store.read_block(i, ("depth",))["depth"],
                                      expected_crop(folder, "depth", start, 8, y, x, 16))


def test_the_same_plan_rebuilt_in_another_layout_on_an_existing_cluster_reads_back(one_shot):
    """--scheduler: the worker that wrote the unsharded store must not write its sharded rebuild (same URL, same plan,
    --overwrite --inner-chunk) through array handles that still hold the old chunking: the store was marked complete
    and no block of it could be decoded."""
    from distributed import LocalCluster

    def build(**kw):
        return build_store(one_shot["dataset"], one_shot["captures"], str(one_shot["store"]), progress=False,
                           scheduler=cluster.scheduler_address, manifests_root=one_shot["manifests"], **kw)

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        assert build().array("color").shards is None
        store = build(overwrite=True, inner_chunk=16)
    assert store.complete and store.array("color").shards == (1, 8, 3, 32, 32)
    for i, (_, shot, start, y, x) in enumerate(store.origins()):
        folder = one_shot["captures"] / store.attrs["shots"][shot]["path"]
        for name in IMAGE_ARRAYS:
            np.testing.assert_array_equal(store.read_block(i, (name,))[name],
                                          expected_crop(folder, name, start, 8, y, x, 32), err_msg=name)


def test_builtin_renderer_captures_end_to_end(builtin_captures, tmp_path):
    """Real renders: every block is the bit-exact float16 crop of its source frames; motion stays in full-frame
    pixels (no rescaling: equal to the source crop), jitter per frame, history flags false at block start and at
    the cut inside fence/low_cut (12 frames, cut at 6: its window must cross it)."""
    from qw.datagen.capture_format import load_meta

    ds = dataset({"builtin_fence": 6, "builtin_specular": 6}, tile=128, candidates=2).model_copy(
        update={"splits": ["train", "val"]})
    url = str(tmp_path / "builtin.zarr")
    build_store(ds, builtin_captures, url, workers=2, progress=False)
    store = open_store(url)
    assert store.num_blocks == 12
    shots = store.attrs["shots"]
    seen_cut = False
    for i, (scene, shot, start, y, x) in enumerate(store.origins()):
        folder = builtin_captures / shots[shot]["path"]
        meta = load_meta(folder)
        block = store.read_block(i, (*IMAGE_ARRAYS, "jitter", "history_valid"))
        for name in IMAGE_ARRAYS:
            expect = expected_crop(folder, name, start, 8, y, x, 128)
            np.testing.assert_array_equal(block[name].view(np.uint16), expect.view(np.uint16), err_msg=name)
        assert np.abs(block["motion"].astype(np.float32)).max() > 0.05  # the cameras move
        np.testing.assert_array_equal(block["jitter"], meta.jitter_array()[start:start + 8])
        expected_history = meta.history_valid()[start:start + 8].copy()
        expected_history[0] = False
        assert block["history_valid"].tolist() == expected_history.tolist()
        seen_cut |= not all(block["history_valid"][1:])
    assert seen_cut
