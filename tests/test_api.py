"""The public Python API (`import qw`) on real stores, captures and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import qw
from blocks_helpers import capture_meta, write_shot
from qw.datagen.capture_format import read_frame, write_frame
from train_helpers import make_store


def test_block_store_as_a_torch_dataset(tmp_path):
    url = make_store(tmp_path / "blocks.zarr", n_train=5, n_val=2, t=4, tile=32)
    store = qw.open_store(url)
    train = store.split_indices("train")
    loader = DataLoader(torch.utils.data.Subset(qw.BlockDataset(url), train), batch_size=5, num_workers=1)
    batch = next(iter(loader))
    assert batch["color"].shape == (5, 4, 3, 32, 32) and batch["color"].dtype == torch.float16
    for k, index in enumerate(batch["index"].tolist()):
        stored = store.read_block(index)
        for name in ("color", "reference", "motion", "history_valid"):
            assert np.array_equal(batch[name][k].numpy(), stored[name])


@pytest.fixture
def shots(tmp_path):
    """Two shots (random pixels), one with a camera cut at frame 5 and a depth value beyond float16."""
    metas = [capture_meta("alpha", "s1", 11, 40, 24, cuts=[5]), capture_meta("alpha", "s2", 6, 40, 24)]
    return tmp_path, [write_shot(tmp_path, meta) for meta in metas], metas


def test_captured_sequences_are_full_resolution_windows(shots):
    root, (s1, s2), (m1, _) = shots
    clips = qw.CapturedSequences(root, frames=4, stride=3, passes=("color", "motion", "depth"))
    # s1 (11 frames): windows at 0, 3, 6; s2 (6 frames): at 0
    assert [(w.shot, w.start) for w in clips.windows] == [(s1, 0), (s1, 3), (s1, 6), (s2, 0)]
    item = clips[1]
    assert item["shot"] == str(s1) and item["start"] == 3
    assert item["color"].shape == (4, 3, 24, 40) and item["motion"].shape == (4, 2, 24, 40)
    for k in range(4):
        assert np.array_equal(item["color"][k].numpy(), read_frame(s1, "color", 3 + k).transpose(2, 0, 1))
        assert np.array_equal(item["motion"][k].numpy(),
                              read_frame(s1, "motion", 3 + k).astype(np.float16).transpose(2, 0, 1))
    assert item["depth"].dtype == torch.float16 and item["depth"][0, 0, 0, 0] == 65504  # clipped, not inf
    assert item["history_valid"].tolist() == [False, True, False, True]  # window start, cut at frame 5
    assert np.array_equal(item["jitter"].numpy(), m1.jitter_array()[3:7])


def test_captured_sequences_whole_shots_in_float32_through_a_dataloader(shots):
    root, (s1, s2), _ = shots
    clips = qw.CapturedSequences([s2, s1], frames=None, dtype=torch.float32)
    assert [(w.shot, w.length) for w in clips.windows] == [(s2, 6), (s1, 11)]
    batch = next(iter(DataLoader(clips, batch_size=1, num_workers=1)))
    assert batch["reference"].shape == (1, 6, 3, 24, 40) and batch["reference"].dtype == torch.float32
    assert np.array_equal(batch["reference"][0, 5].numpy(), read_frame(s2, "reference", 5).transpose(2, 0, 1))
    assert len(qw.CapturedSequences(root, frames=7)) == 1  # s2 is shorter than a window: left out


def test_captured_sequences_refuse_bad_input(tmp_path, shots):
    with pytest.raises(qw.QwError, match="no complete captured shot"):
        qw.CapturedSequences(tmp_path / "nothing")
    with pytest.raises(qw.QwError, match="unknown pass"):
        qw.CapturedSequences(shots[0], passes=("albedo",))


def test_captured_sequences_name_a_frame_of_another_size(shots):
    """A frame smaller than capture.json says (a damaged EXR whose data window still decodes) ended reading the
    window in numpy's 'all input arrays must have the same shape', naming no file."""
    root, (s1, _), _ = shots
    write_frame(s1, "color", 2, np.ones((12, 40, 3)))
    clips = qw.CapturedSequences(s1, frames=4)
    with pytest.raises(qw.QwError, match=r"color/000002\.exr: frame is 40×12, capture\.json says 40×24"):
        clips[0]


def test_reconstruct_shot_is_the_model_over_the_captured_sequence(tiny_checkpoints, builtin_captures):
    """Load a checkpoint, run it on frames 2..5 of a shot with a camera cut (frame 6 of low_cut): the streamed
    frames equal QWNet.forward on the same window read through CapturedSequences."""
    fp, _ = tiny_checkpoints
    model, config, quantized = qw.load_checkpoint(fp)
    assert not quantized and config.model.widths == [8, 12, 16, 20, 24]
    shot = builtin_captures / "builtin_fence" / "low_cut"
    streamed = list(qw.reconstruct_shot(model, shot, start=2, count=6, device="cpu"))
    assert [index for index, _ in streamed] == list(range(2, 8))
    clips = qw.CapturedSequences(shot, frames=6, stride=1, dtype=torch.float32)
    clip = clips[[w.start for w in clips.windows].index(2)]
    assert clip["history_valid"].tolist() == [False, True, True, True, False, True]
    with torch.no_grad():
        expected = model(clip["color"][None], clip["motion"][None], clip["history_valid"][None])[0]
    for (_, image), want in zip(streamed, expected):
        assert image.shape == (256, 320, 3) and image.dtype == np.float32
        np.testing.assert_allclose(image, want.permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-5)


def test_inspect_counts_every_stored_byte_of_a_local_store(tmp_path):
    from qw.datagen.inspect_store import _stored_bytes

    url = make_store(tmp_path / "blocks.zarr", n_train=3, n_val=1, t=2, tile=16)
    files = [p for p in Path(url).rglob("*") if p.is_file()]
    assert len(files) > 4 * 4  # a chunk per block and image array, nested folders, metadata
    assert _stored_bytes(url, None) == sum(p.stat().st_size for p in files)
