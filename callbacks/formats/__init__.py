__all__ = ["dcz", "huffman", "onnx_files", "size_report", "tensor_encodings", "traced"]
