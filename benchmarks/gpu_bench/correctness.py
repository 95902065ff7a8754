"""Section correctness: fused filter and optimized inference against the plain fp32 model."""

from __future__ import annotations


import torch

from qw.training.model import fast

from gpu_bench.harness import Case, FLOAT_TOL, HALF_TOL, Harness, rel_err


class Correctness(Harness):
    def correctness(self) -> None:
        s = self.sizes
        seq = self.block_batch(2, seed=1)

        def fused_filter() -> Case:
            plain, fused = self.model().eval(), fast.fuse_filter(self.model().eval())
            with torch.no_grad():
                err = rel_err(fused(seq["color"], seq["motion"], seq["history_valid"]),
                              plain(seq["color"], seq["motion"], seq["history_valid"]))
            return Case(lambda: None, err, f"fp32, {s.frames}-step recurrence, 2 blocks {s.tile}²")

        self.row("correctness", "fused filter fp32 vs plain", fused_filter, unit="", tol=FLOAT_TOL, reps=0)
        self.row("correctness", "fp16 CL folded fused vs plain, random", lambda: self._inference_check(seq),
                 unit="", tol=HALF_TOL, reps=0)
        if self.args.store:
            self.row("correctness", "fp16 CL folded fused vs plain, store", lambda: self._inference_check(
                self._store_blocks(), f"{self.args.store}"), unit="", tol=HALF_TOL, reps=0)

    def _inference_check(self, seq: dict[str, torch.Tensor], note: str = "random blocks") -> Case:
        plain = self.model().eval()
        fast_model = fast.fold_batch_norms(fast.fuse_filter(self.model())).to(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = plain(seq["color"], seq["motion"], seq["history_valid"])
            with self.autocast(torch.float16):
                out = fast_model(fast.channels_last_frames(seq["color"]), fast.channels_last_frames(seq["motion"]),
                                 seq["history_valid"])
        return Case(lambda: None, rel_err(out, expected), f"{note}, {tuple(seq['color'].shape)}")

    def _store_blocks(self) -> dict[str, torch.Tensor]:
        from qw.training.data import BlockDataset

        dataset = BlockDataset(self.args.store)
        items = [dataset[i] for i in range(min(4, len(dataset)))]
        return {k: torch.stack([it[k] for it in items]).to(self.device) for k in ("color", "motion", "history_valid")}
