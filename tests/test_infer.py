"""`qw infer`: streaming recurrence equals QWNet.forward, any resolution, EXR/PNG/MP4 outputs."""

import json

import imageio.v2 as imageio
import numpy as np
import torch
from click.testing import CliRunner

from qw.cli import main
from qw.datagen.capture_format import PASSES, load_meta, read_exr
from qw.training.config import ModelConfig
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
    assert bad.exit_code == 2 and "outside the shot" in bad.output
