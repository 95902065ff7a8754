"""`qw infer`: streaming recurrence equals QWNet.forward, any resolution, EXR/PNG/MP4 outputs."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_helpers import small_shot, write_checkpoint

import qw
from qw.cli import main
from qw.datagen.capture_format import PASSES, load_meta, read_exr
from qw.training.config import Config, ModelConfig
from qw.training.infer import frame_range, input_frames, run_qwnet, to_image
from qw.training.model.qwnet import QWNet
from qw.training.quantization.qat import model_from_any_checkpoint


def test_streaming_recurrence_equals_forward_at_an_odd_resolution():
    torch.manual_seed(0)
    model = QWNet(ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1])).eval()
    color = torch.rand(1, 4, 3, 37, 53) * 3
    motion = torch.randn(1, 4, 2, 37, 53)
    valid = torch.tensor([[False, True, False, True]])  # a cut at frame 2
    frames = [(color[:, t], motion[:, t], bool(valid[0, t])) for t in range(4)]
    streamed = torch.stack(list(run_qwnet(model, iter(frames))), 1)
    with torch.no_grad():
        batch = model(color, motion, valid)
    assert streamed.shape == (1, 4, 3, 37, 53)
    torch.testing.assert_close(streamed, batch)


def test_infer_exr_output_matches_the_model_and_writes_a_preview(tiny_checkpoints, builtin_captures, tmp_path):
    _, q = tiny_checkpoints
    shot = builtin_captures / "builtin_fence" / "low_cut"
    out = tmp_path / "exr"
    result = CliRunner().invoke(main, ["-q", "infer", "--checkpoint", str(q), "--input", str(shot), "--out", str(out),
                                       "--start", "4", "--count", "3"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (out / "exr").iterdir())
    assert written == ["000004.exr", "000005.exr", "000006.exr"]
    meta = load_meta(shot)
    model, _, _ = model_from_any_checkpoint(q)
    expected = [to_image(f) for f in run_qwnet(model, input_frames(shot, meta, frame_range(meta, 4, 3)))]
    for name, want in zip(written, expected):
        got = read_exr(out / "exr" / name, PASSES["color"].channels, np.float16)
        assert got.shape == (meta.height, meta.width, 3)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3, atol=1e-3)  # half precision
    assert len(imageio.mimread(out / "preview.mp4")) == 3
    record = json.loads((out / "infer.json").read_text())
    assert record["frames"] == [4, 7] and record["quantized"]


def test_infer_png_and_mp4(tiny_checkpoints, builtin_captures, tmp_path):
    fp, _ = tiny_checkpoints
    shot = builtin_captures / "builtin_specular" / "orbit"
    runner = CliRunner()
    for fmt in ("png", "mp4"):
        result = runner.invoke(main, ["-q", "infer", "--checkpoint", str(fp), "--input", str(shot), "--out",
                                      str(tmp_path / fmt), "--format", fmt, "--count", "2"])
        assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "png" / "png").iterdir())
    assert len(pngs) == 2 and imageio.imread(pngs[0]).shape == (256, 320, 3)
    frames = imageio.mimread(tmp_path / "mp4" / "output.mp4")
    assert len(frames) == 2 and frames[0].shape == (256, 320, 3)
    bad = runner.invoke(main, ["infer", "--checkpoint", str(fp), "--input", str(shot), "--out", str(tmp_path / "x"),
                               "--start", "99"])
    assert bad.exit_code == 2 and "builtin_specular/orbit: start frame 99 outside the shot's 0.." in bad.output


def test_infer_feeds_a_jitter_reading_model_each_frames_jitter(tmp_path):
    """A model trained with `model.jitter_input` needs every frame's sample offset: qw infer read none and crashed."""
    cfg = Config(model=ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1], jitter_input=True))
    checkpoint = write_checkpoint(tmp_path / "j.pt", cfg)
    shot = small_shot(tmp_path / "captures")
    result = CliRunner().invoke(main, ["-q", "infer", "--checkpoint", str(checkpoint), "--input", str(shot),
                                       "--out", str(tmp_path / "o"), "--format", "exr"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = load_meta(shot)
    frames = list(input_frames(shot, meta, frame_range(meta)))
    model, _, _ = model_from_any_checkpoint(checkpoint)
    with torch.no_grad():  # the whole sequence at once, with the capture's jitter per frame
        expected = model(torch.stack([c for c, _, _ in frames], 1), torch.stack([m for _, m, _ in frames], 1),
                         torch.tensor([[v for _, _, v in frames]]),
                         torch.from_numpy(meta.jitter_array())[None])
    assert np.abs(meta.jitter_array()).max() > 0
    for k in range(meta.frame_count):
        got = read_exr(tmp_path / "o" / "exr" / f"{k:06d}.exr", PASSES["color"].channels, np.float16)
        np.testing.assert_allclose(got.astype(np.float32), to_image(expected[:, k]), rtol=1e-3, atol=1e-3)


def test_infer_refuses_a_frame_of_another_size_naming_it(tmp_path):
    """A frame whose size differs from capture.json's crashed the warp with a torch traceback mid-run."""
    from qw.datagen.capture_format import frame_path, write_frame

    cfg = Config(model=ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1]))
    checkpoint = write_checkpoint(tmp_path / "m.pt", cfg)
    shot = small_shot(tmp_path / "captures")
    for name in ("color", "motion"):
        original = frame_path(shot, name, 1).read_bytes()
        write_frame(shot, name, 1, np.ones((32, 32, len(PASSES[name].channels)), PASSES[name].dtype))
        result = CliRunner().invoke(main, ["-q", "infer", "--checkpoint", str(checkpoint), "--input", str(shot),
                                           "--out", str(tmp_path / "o")])
        # a capture that breaks its own contract: exit status 1, as `qw datagen build` gives for the same frame
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output + repr(result.exception)
        assert result.output == (f"qw: error: {frame_path(shot, name, 1)}: frame is 32×32, capture.json says "
                                 "64×48\n")
        assert not (tmp_path / "o" / "infer.json").exists()
        frame_path(shot, name, 1).write_bytes(original)


def test_reconstruct_shot_refuses_a_count_below_one(tmp_path):
    """`qw.reconstruct_shot(count=0)` (or a negative count) yielded nothing and raised nothing: the API took the
    empty range that `qw infer --count` refuses."""
    cfg = Config(model=ModelConfig(widths=[8, 12, 16], decoder_convs=[1, 1]))
    model, _, _ = model_from_any_checkpoint(write_checkpoint(tmp_path / "m.pt", cfg))
    shot = small_shot(tmp_path / "captures")
    for count in (0, -2):
        with pytest.raises(qw.QwError, match=f"frame count {count}: must be at least 1"):
            list(qw.reconstruct_shot(model, shot, count=count, device="cpu"))
    assert [i for i, _ in qw.reconstruct_shot(model, shot, start=1, count=1, device="cpu")] == [1]
    # the captures folder instead of a shot in it said the folder's capture.json was missing
    with pytest.raises(qw.QwError, match=f"a captures folder \\(1 shot\\); qw.reconstruct_shot takes one shot, "
                                         f"e.g. shot {shot}"):
        list(qw.reconstruct_shot(model, tmp_path / "captures", device="cpu"))
