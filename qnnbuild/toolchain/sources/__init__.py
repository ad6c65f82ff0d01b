"""Models from elsewhere → ONNX: torch, TensorFlow/TFLite, Hugging Face, and what a model file says."""
