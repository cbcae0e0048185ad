"""Export of the inference graph to TorchScript and ONNX."""
