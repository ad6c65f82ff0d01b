"""LLMs: their layout, export, quantization, runner, parts and onnxruntime-genai config."""
