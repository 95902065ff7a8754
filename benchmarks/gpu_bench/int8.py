"""Section int8: the exported integer network with int8 GEMMs."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from qw.training.model import fast
from qw.training.config import QuantConfig

from gpu_bench.harness import Case, Harness, no_grad_call, rel_err


class Int8(Harness):
    def int8(self) -> None:
        s = self.sizes
        built: dict[str, Any] = {}

        def models() -> dict[str, Any]:
            if not built:
                from qw.training.export.qwq import exported_model, write_qwq
                from qw.training.export.integer_ref import load_integer_model
                from qw.training.quantization.fake_quant import quantize_model

                qmodel = quantize_model(self.model().cpu(), QuantConfig()).eval()
                with tempfile.TemporaryDirectory() as tmp:
                    write_qwq(Path(tmp) / "bench.qwq", exported_model(qmodel, self.cfg))
                    reference, _ = load_integer_model(Path(tmp) / "bench.qwq")
                built.update(qmodel=qmodel, reference=reference, int8=fast.int8_model(reference).to(self.device))
            return built

        def check_against_reference() -> float:
            """The integer reference runs on the CPU (int32 matmul): compare on a crop."""
            color, motion, previous = (x.cpu() for x in self.frame_inputs(s.check, s.check, seed=3))
            m = models()
            with torch.no_grad():
                expected = fast.frame_step(m["reference"], color, motion, previous)
                out = fast.frame_step(m["int8"], *(x.to(self.device) for x in (color, motion, previous)))
            return rel_err(out, expected)

        color, motion, previous = self.frame_inputs(s.height, s.width)

        def fake_quant() -> Case:
            qmodel = copy.deepcopy(models()["qmodel"]).to(self.device)
            return Case(lambda: no_grad_call(lambda: qmodel.step(color, qmodel.warp_history(previous, motion))), None,
                        "QAT model (training/quantization/fake_quant.py) as trained: float convs on integer codes")

        def int8(graph: bool) -> Case:
            err = check_against_reference()
            model = models()["int8"]
            with torch.no_grad():
                frame = (lambda c, m, p: fast.frame_step(model, c, m, p))
                fn = fast.CudaGraphFrame(frame, color, motion, previous) if graph else frame
                fn(color, motion, previous)
            return Case(lambda: no_grad_call(lambda: fn(color, motion, previous)), err,
                        f"vs integer reference on a {s.check}² crop", profile=not graph)

        self.row("int8", "QAT fake-quant fp32 eager (plain)", fake_quant, unit="ms", plain=True, need_s=15)
        self.row("int8", "INT8 _int_mm convs eager", lambda: int8(False), unit="ms", tol=1e-3, need_s=15)
        self.row("int8", "INT8 _int_mm convs + CUDA graph", lambda: int8(True), unit="ms", tol=1e-3, need_s=15,
                 skip="" if self.cuda else "CUDA graphs need a GPU")
