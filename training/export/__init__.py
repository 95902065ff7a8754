"""Export: the `.qwq` integer file, its integer reference implementation, ONNX graphs, and `qw export`."""
