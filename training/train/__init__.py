"""Training: the loop (`loop`), processes under torchrun (`ddp`), checkpoints (`checkpoints`) and run logs
(`run_log`)."""
