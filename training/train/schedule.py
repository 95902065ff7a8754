"""The learning-rate schedule as a pure function of the optimizer step and the train config.

Being a function of the step alone (no scheduler state), a resumed run sets its rate from the checkpoint's step,
and `--resume` may change any schedule setting that leaves the steps already taken unchanged: e.g. continue a
constant-rate run with a decay over its last `decay_steps` (warm-up, stable, decay), from any of its checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler

from qw.training.config import TrainConfig

# The settings `lr_factor` reads besides `lr`: --resume compares the rates they give, not their values.
SCHEDULE_KEYS = frozenset({"steps", "schedule", "warmup_steps", "final_lr_ratio", "milestones", "gamma",
                           "decay_steps"})


def lr_factor(step: int, train: TrainConfig) -> float:
    """The fraction of `train.lr` that optimizer step `step` (1-based) uses: linear warm-up (step k <= W uses k/W),
    then constant, cosine decay to final_lr_ratio at the last step, ×gamma after each milestone, or constant with a
    linear decay to final_lr_ratio over the last `decay_steps`."""
    warmup = train.warmup_steps if train.warmup_steps > 1 else 0  # a 1-step warm-up is lr·1/1: none
    if step <= warmup:
        return step / warmup
    final = train.final_lr_ratio
    if train.schedule == "cosine":
        span = max(train.steps - warmup - 1, 1)
        return final + (1 - final) * (1 + math.cos(math.pi * min(step - warmup - 1, span) / span)) / 2
    if train.schedule == "step":
        return train.gamma ** sum(step > m for m in train.milestones)
    decay_from = train.steps - train.decay_steps
    if train.decay_steps and step > decay_from:
        return 1 - (1 - final) * min(step - decay_from, train.decay_steps) / train.decay_steps
    return 1.0


def changed_rate(have: TrainConfig, want: TrainConfig, done: int) -> int | None:
    """The first of the steps 1..done whose fraction of lr differs between the two schedules, or None."""
    return next((k for k in range(1, done + 1) if lr_factor(k, have) != lr_factor(k, want)), None)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, done: int = 0) -> lr_scheduler.LambdaLR:
    """A scheduler that sets `optimizer`'s rate for step done + 1, and for each next step when stepped once per
    optimizer step. `done` > 0 (a resumed run) needs the optimizer state of a run that had a scheduler (its
    param groups' `initial_lr`)."""
    return lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch + 1, train), last_epoch=done - 1)
