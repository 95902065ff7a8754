"""Evaluation: image metrics, the TAA baselines and `qw eval`."""
