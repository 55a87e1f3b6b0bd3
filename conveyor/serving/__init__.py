"""Serving: the inference service over onnxruntime, its routing and metrics, and the prediction log."""
