"""What is true of Qualcomm's and onnxruntime's tools: QNN sessions, the target table, calibration data, ONNX
graph helpers and rewrites, encodings, metrics."""
