"""Quantization: one typed QuantSpec, onnxruntime's quantizer, QNN rules, encodings, block-wise weights, AIMET,
sensitivity and the automatic precision search."""
