"""The int8 form a quantized net ships in (callbacks/surgery/quantize.py): each quantized layer as an
`Int8Layer`, which torch.onnx writes as a QDQ graph that onnxruntime fuses into QLinearConv / QGemm
kernels (callbacks/formats/traced.py), and the bytes each state-dict key takes in that artifact (the
compression report of QAT and PTQ)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from callbacks.surgery import int8_ops as qd
from callbacks.surgery.quantize import (
    ACT_QMAX,
    ACT_QMIN,
    WEIGHT_QMAX,
    activation_qparams,
    folded_weight_bias,
    quantized_layers,
    weight_scales,
)
from callbacks.surgery.structure import set_module

__all__ = ["CONV_CHANNEL_MULTIPLE", "Int8Layer", "int8_module", "shipped_bytes"]

# onnxruntime's fast int8 convolution (MLAS's symmetric indirect kernel) takes input channels in multiples of
# 4 only; a conv with e.g. 3 (an RGB input) falls back to im2col + int8 GEMM, 2-3x slower than fp32 on it
CONV_CHANNEL_MULTIPLE = 4


class Int8Layer(nn.Module):
    """A quantized Linear / Conv2d as it ships: int8 weights with per-channel scales, fp32 bias (BN
    folded in), and quantize / dequantize of its input and output at fixed uint8 parameters; torch.onnx
    writes it as QuantizeLinear / DequantizeLinear around the Conv / Gemm, which onnxruntime fuses."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        source = layer.__dict__["input_from"]
        input_range = layer.input_range if source is None else source.output_range
        if input_range[0] > input_range[1] or layer.output_range[0] > layer.output_range[1]:
            raise ValueError("a quantized layer has never observed its activations: run QAT or PTQ calibration first")
        weight, bias = folded_weight_bias(layer)
        weight, bias = weight.detach().float(), None if bias is None else bias.detach().float()
        scales = weight_scales(weight)
        shape = (-1, *[1] * (weight.dim() - 1))
        weight_int8 = torch.clamp(torch.round(weight / scales.reshape(shape)), -WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8)
        # a plain conv's input channels padded with zero channels (and zero weights) to a multiple the fast
        # int8 kernel takes: the outputs are unchanged (a zero input channel maps to the zero point)
        self.channel_pad = (
            0 if isinstance(layer, nn.Linear) or layer.groups != 1 else -weight.shape[1] % CONV_CHANNEL_MULTIPLE
        )
        if self.channel_pad:
            weight_int8 = F.pad(weight_int8, (0, 0, 0, 0, 0, self.channel_pad))
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", scales)
        self.register_buffer("weight_zero_point", torch.zeros_like(scales, dtype=torch.int64))
        self.register_buffer("bias", bias)
        self.qparams = [
            (float(s), int(z)) for s, z in (activation_qparams(r) for r in (input_range, layer.output_range))
        ]
        self.relu = layer.__dict__["fused_relu"]
        self.linear = isinstance(layer, nn.Linear)
        self.conv = (
            None
            if self.linear
            else dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        )

    @staticmethod
    def requantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        q = qd.quantize_per_tensor(x, scale, zero_point, ACT_QMIN, ACT_QMAX, torch.uint8)
        return qd.dequantize_per_tensor(q, scale, zero_point, ACT_QMIN, ACT_QMAX, torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channel_pad))
        x = self.requantize(x, *self.qparams[0])
        weight = qd.dequantize_per_channel(
            self.weight_int8, self.weight_scale, self.weight_zero_point, 0, -WEIGHT_QMAX, WEIGHT_QMAX, torch.int8
        )
        y = F.linear(x, weight, self.bias) if self.linear else F.conv2d(x, weight, self.bias, **self.conv)
        if self.relu:
            y = F.relu(y)
        return self.requantize(y, *self.qparams[1])


def int8_module(net: nn.Module) -> nn.Module:
    """A copy of the quantized `net` with every quantized layer an `Int8Layer` and every BatchNorm
    or ReLU it absorbed an Identity: what the int8 export traces."""
    net = copy.deepcopy(net).cpu().eval()
    absorbed = [name for name, m in net.named_modules() if "absorbed_into" in m.__dict__]
    int8 = {name: Int8Layer(layer) for name, layer in quantized_layers(net).items()}  # before any is replaced
    for name, layer in int8.items():
        set_module(net, name, layer)
    for name in absorbed:
        set_module(net, name, nn.Identity())
    return net


def shipped_bytes(net: nn.Module) -> dict[str, int]:
    """Bytes per state-dict key of `net` as the int8 artifact stores it: each quantized weight at 1
    byte per value (its nonzeros plus a 1-bit mask where that is smaller) plus a 4-byte scale and a
    1-byte zero point per channel; activation ranges as one scale and zero point each; a folded
    BatchNorm as the fp32 bias it adds to its layer; the phase flag not at all."""
    sizes: dict[str, int] = {}
    names = {id(m): n for n, m in net.named_modules()}
    for name, layer in quantized_layers(net).items():
        prefix = f"{name}." if name else ""
        weight = layer.weight.detach()
        count = weight.numel()
        values = min(count, int((weight != 0).sum()) + math.ceil(count / 8))
        sizes[f"{prefix}weight"] = values + 5 * weight.shape[0]
        sizes[f"{prefix}output_range"] = 5
        sizes[f"{prefix}input_range"] = 0 if layer.__dict__["input_from"] is not None else 5  # shared otherwise
        sizes[f"{prefix}quant_phase"] = 0
        bn = layer.__dict__.get("folded_bn")
        if bn is not None:
            bn_prefix = f"{names[id(bn)]}."
            for key in ("weight", "running_mean", "running_var", "num_batches_tracked"):
                sizes[bn_prefix + key] = 0
            sizes[bn_prefix + "bias"] = 4 * bn.num_features  # the folded bias (fp32)
            if layer.bias is not None:
                sizes[f"{prefix}bias"] = 0  # merged into the folded bias
    return sizes
