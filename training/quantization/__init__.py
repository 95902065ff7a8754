"""Quantization: fake quantizers and the QAT model (`fake_quant`), and the `qw quantize` fine-tuning (`qat`)."""
