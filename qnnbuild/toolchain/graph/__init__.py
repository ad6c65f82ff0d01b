"""ONNX graph surgery: names, shapes, rewrites, the clean fp32 model."""
