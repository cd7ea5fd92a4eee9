"""ONNX export: multi-task and per-task graphs, validation, optimization, quantization, bundles."""
