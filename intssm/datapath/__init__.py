"""The datapath's description: the model and quantization configs, the integer primitives, the integer model's layout, the input quantizer."""
