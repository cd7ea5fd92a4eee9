"""ONNX export: graphs built from the checkpoint's tensors, validation, bundles (format v2)."""
