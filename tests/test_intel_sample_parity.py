"""The `intel-sample` preset computes what the public QW-Net sample computes: network outputs over a 3-step
recurrence and the loss, against numbers produced by the sample's own code (tests/fixtures/intel_sample)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qw.training.config import LossSpec, load_config
from qw.training.losses import qwnet_loss
from qw.training.model.qwnet import QWNet

FIXTURE = Path(__file__).parent / "fixtures" / "intel_sample" / "sample_parity.npz"


def qw_state_dict(params: dict[str, np.ndarray], widths: list[int]) -> dict[str, torch.Tensor]:
    """The sample's nested module names → qw's. Its decoder concatenates [skip, upsampled], qw [upsampled, skip];
    its down and up kernel predictors are two 1×1 convs, qw's one conv with both outputs."""
    p = {k.removeprefix("param/model."): torch.from_numpy(v.astype(np.float32)) for k, v in params.items()}
    out = {}
    for d in range(len(widths)):
        nested = "encoder_decoder." * (d + 1)
        for i in range(2):
            for kind in ("weight", "bias"):
                out[f"extractor.encoder.{d}.{i}.conv.{kind}"] = p[f"{nested}encoder_stage.conv_groups.{i}.conv.{kind}"]
        k = 0
        while d < len(widths) - 1 and f"{nested}decoder_stage.conv_groups.{k}.conv.weight" in p:
            weight = p[f"{nested}decoder_stage.conv_groups.{k}.conv.weight"]
            if k == 0:
                weight = torch.cat([weight[:, widths[d]:], weight[:, :widths[d]]], dim=1)
            out[f"extractor.decoder.{d}.{k}.conv.weight"] = weight
            out[f"extractor.decoder.{d}.{k}.conv.bias"] = p[f"{nested}decoder_stage.conv_groups.{k}.conv.bias"]
            k += 1
        filters = "filter_nw." * (d + 1)
        stages = ["filter_stage_dwn"] + (["filter_stage_ups"] if d < len(widths) - 1 else [])
        for kind in ("weight", "bias"):
            out[f"filter.predictors.{d}.{kind}"] = torch.cat([p[f"{filters}{s}.conv.{kind}"] for s in stages])
    return out


@pytest.fixture(scope="module")
def sample():
    return dict(np.load(FIXTURE))


def test_intel_sample_preset_reproduces_the_public_sample(sample):
    meta = json.loads(str(sample["meta"]))
    widths = [w for w, _ in meta["encoder_stages"]]
    cfg = load_config("intel-sample").model.model_copy(
        update={"widths": widths, "decoder_convs": [n for _, n in meta["decoder_stages"]]})
    model = QWNet(cfg).eval()
    model.load_state_dict(qw_state_dict({k: v for k, v in sample.items() if k.startswith("param/")}, widths))
    color, motion, reference = (torch.from_numpy(sample[k].astype(np.float32))[None]
                                for k in ("color", "motion", "reference"))
    valid = torch.tensor([[False] + [True] * (color.shape[1] - 1)])
    with torch.no_grad():
        out = model(color, motion, valid)
    expected = torch.from_numpy(sample["output"])[None]
    assert (out - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    terms = qwnet_loss(out, reference, motion, valid, LossSpec(cfg.hdr),
                       color=color if cfg.temporal_reset_term else None, warp_padding=cfg.warp_padding)
    for name in ("loss", "spatial", "temporal"):
        assert abs(terms[name].item() - float(sample[name])) <= 1e-5, name
