"""QW-Net: model, training, quantization, evaluation, inference and export."""
