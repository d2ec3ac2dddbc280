"""The three quantize / dequantize ops the int8 module computes with (callbacks/surgery/int8_layers.py), as
the project's own torch ops, and their ONNX forms for torch.onnx's exporter.

Why not `torch.ops.quantized_decomposed`: those ops are registered by importing
`torch.ao.quantization.fx._decomposed`, a module of the deprecated `torch.ao.quantization` that is to be
removed upstream, and torchao (where PT2E now lives) still registers them by importing that same module. Ops
of our own namespace survive that removal, and cannot clash with torch's when torch._inductor imports it.
They keep the `quantized_decomposed` schemas and semantics, so their ONNX forms are onnxscript's
translations of those ops: QuantizeLinear / DequantizeLinear, which onnxruntime fuses into int8 kernels."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["dequantize_per_channel", "dequantize_per_tensor", "onnx_translations", "quantize_per_tensor"]


@torch.library.custom_op("recipes_int8::quantize_per_tensor", mutates_args=())
def quantize_per_tensor(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> torch.Tensor:
    """`x` rounded to the integer grid of `scale` and `zero_point`, clamped to [quant_min, quant_max]."""
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, quant_min, quant_max).to(dtype)


@quantize_per_tensor.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op("recipes_int8::dequantize_per_tensor", mutates_args=())
def dequantize_per_tensor(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> torch.Tensor:
    """The float32 values of the integer tensor `x` on the grid of `scale` and `zero_point`."""
    return (x.to(torch.float32) - zero_point) * scale


@dequantize_per_tensor.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype):
    return torch.empty_like(x, dtype=torch.float32)


@torch.library.custom_op("recipes_int8::dequantize_per_channel", mutates_args=())
def dequantize_per_channel(
    x: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The float32 values of the integer tensor `x`, each slice along `axis` on its own scale and zero point."""
    shape = [1] * x.dim()
    shape[axis] = -1
    return ((x.to(torch.float32) - zero_points.reshape(shape)) * scales.reshape(shape)).to(torch.float32)


@dequantize_per_channel.register_fake
def _(x, scales, zero_points, axis: int, quant_min: int, quant_max: int, dtype: torch.dtype):
    return torch.empty_like(x, dtype=torch.float32)


def onnx_translations() -> dict[Any, Any]:
    """torch.onnx.export's `custom_translation_table` for these ops: each as onnxscript writes its
    quantized_decomposed twin (same arguments, same meaning). Imported here, when an export needs it: the
    training steps that use these ops need no onnxscript."""
    from onnxscript.function_libs.torch_lib.ops import quantized_decomposed as onnx_forms

    ops = torch.ops.recipes_int8
    return {
        ops.quantize_per_tensor.default: onnx_forms.quantized_decomposed_quantize_per_tensor,
        ops.dequantize_per_tensor.default: onnx_forms.quantized_decomposed_dequantize_per_tensor,
        ops.dequantize_per_channel.default: onnx_forms.quantized_decomposed_dequantize_per_channel,
    }
