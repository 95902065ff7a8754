"""The parts of benchmarks/gpu.py: the timing harness and one module per job (section)."""
