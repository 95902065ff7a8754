"""`qw infer`: recurrent reconstruction of a whole captured shot, at the shot's own resolution.

Frames are streamed: one input frame is read, reconstructed from the warped previous output and written before
the next is read, so memory does not grow with the sequence length. Any resolution works (QW-Net pads to a
multiple of 16 and crops back). Outputs: linear HDR EXR frames (the capture contract's colour encoding) with a
tone-mapped MP4 preview, tone-mapped PNG frames, or only the tone-mapped MP4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from datagen import __version__
from datagen.capture_format import PASSES, CaptureMeta, load_meta, read_frame, write_exr
from datagen.errors import QwError
from training.metrics import tonemap
from training.model import pad_to_multiple

FORMATS = ("exr", "png", "mp4")
PREVIEW_FPS_DEFAULT = 30.0


def read_pass(shot: Path, name: str, index: int) -> torch.Tensor:
    """One stored pass of one frame as a (1,C,H,W) float32 tensor."""
    return torch.from_numpy(read_frame(shot, name, index).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def input_frames(shot: Path, meta: CaptureMeta, frames: range) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """(color (1,3,H,W), motion (1,2,H,W), history valid) in order; the first frame requested has no valid history."""
    valid = meta.history_valid()
    for k, index in enumerate(frames):
        yield read_pass(shot, "color", index), read_pass(shot, "motion", index), bool(valid[index]) and k > 0


def read_reference(shot: Path, index: int) -> np.ndarray:
    return read_frame(shot, "reference", index).astype(np.float32)


@torch.no_grad()
def run_qwnet(model: torch.nn.Module, frames: Iterator[tuple],
              device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """QW-Net's recurrence frame by frame (the streaming form of `QWNet.forward`): yields (1,3,H,W) on the CPU.

    Each frame starts with (colour, motion, history valid); a `TaaFrame`'s jitter is passed to a model that reads
    it (``jitter_input``), its depth is ignored."""
    multiple = model.cfg.size_multiple
    previous = None
    for frame in frames:
        color, motion, valid = frame[:3]
        jitter = getattr(frame, "jitter", None)
        h, w = color.shape[-2:]
        color = pad_to_multiple(color, multiple).to(device)
        motion = pad_to_multiple(motion, multiple).to(device)
        history = model.warp_history(previous, motion) if valid and previous is not None else color
        previous = model.step(color, history, None if jitter is None else torch.tensor([jitter], device=device))
        yield previous[..., :h, :w].float().cpu()


def to_image(frame: torch.Tensor) -> np.ndarray:
    """(1,3,H,W) tensor -> H×W×3 float32 array."""
    return frame[0].permute(1, 2, 0).numpy().astype(np.float32)


def to_display_u8(linear: np.ndarray) -> np.ndarray:
    return (np.clip(tonemap(linear), 0, 1) * 255 + 0.5).astype(np.uint8)


def frame_range(meta: CaptureMeta, start: int = 0, count: int | None = None) -> range:
    if not 0 <= start < meta.frame_count:
        raise QwError(f"start frame {start} outside the shot's 0..{meta.frame_count - 1}")
    return range(start, meta.frame_count if count is None else min(meta.frame_count, start + count))


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def reconstruct_shot(model: torch.nn.Module, shot: str | Path, start: int = 0, count: int | None = None,
                     device: str | torch.device | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run QW-Net recurrently over frames start..start+count-1 of a captured shot at its own resolution, streaming:
    yields (frame index, H×W×3 float32 linear HDR output) one frame at a time. The model is moved to `device`."""
    shot = Path(shot)
    meta = load_meta(shot)
    device = default_device(device)
    frames = frame_range(meta, start, count)
    outputs = run_qwnet(model.to(device), input_frames(shot, meta, frames), device)
    for index, frame in zip(frames, outputs):
        yield index, to_image(frame)


def infer_command(checkpoint: str, input_dir: str, out: str, fmt: str = "exr", start: int = 0,
                  count: int | None = None, device: str | None = None) -> dict:
    """Reconstruct a captured shot with a (full-precision or quantized) checkpoint; returns a summary."""
    import imageio.v2 as imageio

    from training.quantize import model_from_any_checkpoint

    if fmt not in FORMATS:
        raise QwError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    shot, out_dir = Path(input_dir), Path(out)
    meta = load_meta(shot)
    model, cfg, quantized = model_from_any_checkpoint(checkpoint)
    device = default_device(device)
    frames = frame_range(meta, start, count)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = None
    if fmt in ("exr", "mp4"):
        video = imageio.get_writer(out_dir / ("preview.mp4" if fmt == "exr" else "output.mp4"),
                                   fps=meta.fps or PREVIEW_FPS_DEFAULT, macro_block_size=1)
    try:
        for index, image in tqdm(reconstruct_shot(model, shot, start, count, device), total=len(frames),
                                 desc="infer", unit="frame"):
            if fmt == "exr":
                write_exr(out_dir / "exr" / f"{index:06d}.exr", image, PASSES["color"].channels, np.float16)
            elif fmt == "png":
                (out_dir / "png").mkdir(exist_ok=True)
                imageio.imwrite(out_dir / "png" / f"{index:06d}.png", to_display_u8(image))
            if video is not None:
                video.append_data(to_display_u8(image))
    finally:
        if video is not None:
            video.close()
    summary = {"checkpoint": str(checkpoint), "input": str(shot), "frames": [frames.start, frames.stop],
               "resolution": [meta.width, meta.height], "format": fmt, "quantized": quantized,
               "quant": cfg.quant.model_dump() if quantized else None, "device": str(device), "qw_version": __version__}
    (out_dir / "infer.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
