"""The only place that opens QNN or onnxruntime sessions: targets, sessions, preloads, shard processes."""
