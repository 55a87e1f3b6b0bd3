"""Models: the generic training loop, evaluation with ONNX export and latency, and experiment tracking."""
