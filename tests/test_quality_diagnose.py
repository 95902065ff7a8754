"""benchmarks/quality_diagnose.py: the history-weight probe reads the history half of the predicted kernels, and
the pixel classes split a frame without overlap."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality_diagnose  # noqa: E402

from qw.training.config import load_config  # noqa: E402
from qw.training.model.qwnet import KERNEL, QWNet, input_weights  # noqa: E402


def _model_favouring(taps: slice) -> QWNet:
    model = QWNet(load_config("paper").model.model_copy(update={"widths": [8, 8, 8], "decoder_convs": [1, 1]})).eval()
    first = model.filter.predictors[0]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        first.bias[taps] = 20.0
    return model


def test_history_weight_probe_reads_the_history_kernel() -> None:
    color, motion = torch.rand(1, 2, 3, 16, 16), torch.zeros(1, 2, 2, 16, 16)
    valid = torch.tensor([[False, True]])
    for taps, expected in ((slice(KERNEL, input_weights()), 1.0), (slice(0, KERNEL), 0.0)):
        model = _model_favouring(taps)
        probe = quality_diagnose.HistoryWeightProbe(model)
        with torch.no_grad():
            model(color, motion, valid)
        assert probe.weight.shape == (16, 16)
        assert torch.allclose(probe.weight, torch.full((16, 16), expected), atol=1e-6)


def test_pixel_classes_split_the_frame_and_find_the_edge() -> None:
    reference = np.zeros((32, 40, 3), np.float32)
    reference[:, 20:] = 4.0  # one vertical edge between columns 19 and 20
    reset = np.zeros((32, 40), bool)
    reset[:4] = True
    classes = quality_diagnose.pixel_classes(reference, reset)
    assert list(classes) == list(quality_diagnose.CLASSES)
    stacked = np.stack(list(classes.values()))
    assert (stacked.sum(0) == 1).all()  # every pixel in exactly one class
    edges = classes["edges"]
    assert edges[4:, 19:21].all() and not edges[:, :18].any() and not edges[:, 22:].any()
    assert not edges[:4].any() and classes["TAA history reset"][:4].all()
