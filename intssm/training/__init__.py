"""The Torch side: the float model and its training, calibration, post-training quantization, the quantized model and quantization-aware training with its fused kernels."""
