"""Shared pytest fixtures. Engineers append their own fixtures below; keep each one small and fast."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

# A small real capture of two builtin scenes: 12 frames per shot at 320x256 with a 4x4 = 16 spp reference.
# builtin_fence/low_cut has a camera cut at stored frame 6 (no cut-free 8-frame window); rise (fence) and crane
# (specular) are 'val' shots, low_cut and orbit 'train' shots. Other tests rely on these names: keep them.
BUILTIN_CAPTURE = {
    "builtin_fence": ["low_cut", "rise"],
    "builtin_specular": ["orbit", "crane"],
}
BUILTIN_CAPTURE_OPTIONS = {"frames": (0, 12), "resolution": (320, 256), "reference_spp": 16}

# ------------------------------------------------------------------------------------------------ test tiers
# Markers (registered in pyproject): `slow` tests are left out by `make test-fast`; `renderer` tests need an EGL
# context for the builtin renderer; `gpu` tests are skipped without CUDA. `renderer` is found from the code: a test
# renders when it, a fixture it uses or a helper of its module it calls names one of RENDERS.
RENDERS = ("capture_scene", "render_shot", "gl_context", "Renderer(", "builtin_captures")
# Node id prefixes of the tests that took longest in a full run on 2 shared cores (--durations): end-to-end runs,
# training to convergence, real clusters (the wheel test marks itself).
SLOW = ("tests/test_export.py::test_integer_reference_equals_fake_quant_on_a_builtin_capture",
        "tests/test_train_overfit.py", "tests/test_api.py::test_reconstruct_shot_is_the_model_over_the_captured_sequence",
        "tests/test_eval.py", "tests/test_taa.py::test_every_held_out_builtin_shot_moves",
        "tests/test_taa.py::test_taa_beats_the_aliased_input_and_taa_clamp_on_every_moving_shot", "tests/test_ddp.py",
        "tests/test_tile.py::test_sigkill_at_random_points_then_rerun_is_byte_identical",
        "tests/test_fast.py::test_compiled_step_is_one_graph_for_all_steps_with_the_eager_numbers", "tests/test_cluster.py")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _renders(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    if function is None:
        return False
    helpers = [getattr(item.module, name) for name in function.__code__.co_names
               if inspect.isfunction(getattr(item.module, name, None))]
    fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
    text = "".join(_source(code) for code in (function, *helpers, *fixtures))
    if getattr(getattr(item.module, "capture_scene", None), "__module__", "").startswith("qw.ue_capture"):
        text = text.replace("capture_scene", "")  # the Unreal backend's, run against a stand-in editor
    return any(mark in text for mark in RENDERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = None
    for item in items:
        if _renders(item):
            item.add_marker(pytest.mark.renderer)
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))



@pytest.fixture(scope="session")
def builtin_captures(tmp_path_factory) -> Path:
    """Root of a captures tree (<root>/<scene>/<shot>/) rendered by the builtin renderer, see BUILTIN_CAPTURE."""
    from qw.capture import capture_scene

    root = tmp_path_factory.mktemp("builtin_captures")
    for scene, shots in BUILTIN_CAPTURE.items():
        capture_scene(scene, root, shots=shots, progress=False, **BUILTIN_CAPTURE_OPTIONS)
    return root


def write_dataset_manifest(path: Path, budgets: dict[str, int], *, name: str = "test", seed: int = 0,
                           frames: int = 8, tile: int = 256, splits: tuple[str, ...] = ("train",)) -> Path:
    """Write a dataset manifest YAML (manifests/datasets schema) drawing `budgets[scene]` blocks per scene."""
    data = {"name": name, "seed": seed, "frames": frames, "tile": tile, "total_blocks": sum(budgets.values()),
            "splits": list(splits), "scenes": [{"scene": s, "budget": b} for s, b in budgets.items()]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def builtin_dataset_manifest(tmp_path_factory, builtin_captures) -> Path:
    """A dataset manifest over the scenes of `builtin_captures`: 2 train blocks per scene, T=8, 256² tiles."""
    return write_dataset_manifest(tmp_path_factory.mktemp("datasets") / "builtin_small.yaml",
                                  {scene: 2 for scene in BUILTIN_CAPTURE})


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(full-precision, W4A4-quantized) checkpoints of a tiny paper-shaped QW-Net, made by `qw train` for 3 steps
    and `qw quantize` for 8 steps (Ranger starts updating after ~5) on a synthetic store (quick: for eval/infer/export tests, not for quality)."""
    from click.testing import CliRunner
    from train_helpers import make_store

    from qw.cli import main

    root = tmp_path_factory.mktemp("tiny_runs")
    store = make_store(root / "blocks.zarr", n_train=4, n_val=1, t=4, tile=32)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "preset": "paper", "model": {"widths": [8, 12, 16, 20, 24]},
        "train": {"steps": 3, "batch_size": 2, "grad_accum": 1, "num_workers": 0, "log_every": 1,
                  "val_every": 1000, "val_blocks": 0, "ckpt_every": 1000}}))
    runner = CliRunner()
    for args in (["train", "--store", store, "--out", str(root / "fp"), "--config", str(config)],
                 ["quantize", "--checkpoint", str(root / "fp" / "last.pt"), "--store", store, "--out",
                  str(root / "q"), "--steps", "8", "--calibration-blocks", "2"]):
        result = runner.invoke(main, ["-q", *args])
        assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "fp" / "last.pt", root / "q" / "last.pt"


@pytest.fixture
def s3_options():
    """Storage options of an empty bucket ``bucket`` on a local S3 server (moto), stopped after the test."""
    import requests
    import s3fs
    from cli_helpers import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test",
                   "client_kwargs": {"region_name": "eu-west-1"}}
        requests.post(f"{options['endpoint_url']}/moto-api/reset", timeout=10)  # moto's state is per process
        s3fs.S3FileSystem(**options).mkdir("bucket")
        yield options
    finally:
        server.stop()
