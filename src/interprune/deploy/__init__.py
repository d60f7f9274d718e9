"""Deployment: ONNX export checked against PyTorch (``export``, ``check``) and ONNX Runtime sessions (``runtime``).

onnx and onnxruntime are an optional extra (``pip install 'interprune[onnx]'``); nothing here is imported by the
rest of interprune unless an ONNX command is asked for.
"""
