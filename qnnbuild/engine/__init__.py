"""Recipe → graph → keys → store → execution. Knows stage kinds only through their declarations and never
imports onnx, onnxruntime or QNN code."""
