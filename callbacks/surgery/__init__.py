__all__ = ["dead_units", "folding", "int8_layers", "quantize", "structure"]
