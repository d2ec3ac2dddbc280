"""Tests of callbacks.formats: ONNX / torch.export artifacts and the .dcz file."""
