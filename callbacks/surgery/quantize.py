"""Int8 quantization of a net's Linear / Conv2d layers, shared by QAT (callbacks/qat.py) and PTQ
(callbacks/ptq.py): fake quantization for training and testing. The int8 module that export writes
as an ONNX QDQ model is callbacks/surgery/int8_layers.py.

Scheme (the ONNX / onnxruntime int8 target, as torchao's X86InductorQuantizer also uses it):
weights per-channel symmetric int8 in [-127, 127] (zero point 0, so a pruned zero stays exactly 0;
scale = max |w| / 127 of each output channel, recomputed from the weights at every step), and each
layer's input and output per-tensor affine uint8 with a range kept by a moving-average observer
(QAT) or the running min / max of calibration batches (PTQ). A BatchNorm right after a layer (found
with torch.fx) is folded into it while it is quantized: the layer computes with
`w * gamma / sqrt(var + eps)` and the folded bias from the BatchNorm's frozen running statistics,
and the BatchNorm passes its input through, so training sees the weights that ship.

Every quantized layer holds three buffers from the first epoch on, whatever the phase, so that every
checkpoint has the same keys: `quant_phase` (FLOAT, OBSERVE, FROZEN), `input_range` and
`output_range` (min, max; +inf, -inf while unobserved). The forward is the layer's own while FLOAT.
The instrumentation is recorded as a structure edit (callbacks/surgery/structure.py), so a net rebuilt from
its config (recipes.evaluate, recipes.export, a resumed run) gets it before its weights load: the
loader passes `instrument` to structure.replay for edits of kind `EDIT` (this module builds on
structure, which does not import it).

Engine: torch's own fake-quantize ops for training (the project's own quantize / dequantize ops for
export, callbacks/surgery/int8_ops.py, used by callbacks/surgery/int8_layers.py); see docs/int8.md for why not torchao's `prepare_qat_pt2e` GraphModule.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from callbacks.surgery.structure import edits, record

__all__ = [
    "ACT_QMAX",
    "ACT_QMIN",
    "EDIT",
    "Links",
    "Phase",
    "WEIGHT_QMAX",
    "activation_qparams",
    "fake_quant_weight",
    "float_copy",
    "folded_weight_bias",
    "instrument",
    "is_quantized",
    "links",
    "quantized_layers",
    "set_phase",
    "weight_scales",
]

QUANTIZABLE = (nn.Linear, nn.Conv2d)
FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d)
PRESERVING = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)  # a quantized input stays on its grid
WEIGHT_QMAX = 127  # symmetric int8 weights: [-127, 127]
ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations
EDIT = "quantize"


class Phase(IntEnum):
    """What a quantized layer does in its forward."""

    FLOAT = 0  # its own fp32 forward (before QAT starts)
    OBSERVE = 1  # fake-quantized; training batches update the activation ranges
    FROZEN = 2  # fake-quantized with fixed ranges (the last epochs, and what ships)


def quantized_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The instrumented layers of `net`, by name."""
    return {name: m for name, m in net.named_modules() if isinstance(m, QUANTIZABLE) and hasattr(m, "quant_phase")}


def is_quantized(net: nn.Module) -> bool:
    """Whether `net` has int8 layers that are fake-quantized (not in the FLOAT phase)."""
    return any(int(m.quant_phase) != Phase.FLOAT for m in quantized_layers(net).values())


@dataclass
class Links:
    """What a quantized layer shares with its neighbours, found in the traced graph (by name)."""

    batchnorm: dict[str, str] = field(default_factory=dict)  # layer -> the BatchNorm folded into it
    relu: dict[str, str] = field(default_factory=dict)  # layer -> the ReLU fused into its output
    source: dict[str, str] = field(default_factory=dict)  # layer -> the layer whose quantized output it takes


def trace(net: nn.Module) -> torch.fx.Graph:
    """The torch.fx graph of `net` (library layers as leaves); ValueError naming the reason when
    `net` cannot be traced (e.g. control flow on tensor values)."""
    try:
        return torch.fx.Tracer().trace(net)
    except Exception as err:  # noqa: BLE001 - any tracing failure is reported the same way
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ValueError(f"torch.fx cannot trace {type(net).__name__} ({reason})") from None


def links(net: nn.Module) -> Links:
    """Fold a BatchNorm that is a layer's only consumer into it; fuse a ReLU module that consumes it
    (or its BatchNorm) and is called nowhere else; and let a layer whose input comes from another
    quantized layer through value-preserving ops only (ReLU, max-pool, flatten, dropout) take that
    layer's output quantization instead of its own, so onnxruntime chains its int8 kernels without
    requantizing in between (the fusions onnxruntime's and torchao's x86 quantizers make).

    A net torch.fx cannot trace (e.g. attention that reads its input's shape) has no links when it
    has no BatchNorm: each layer then quantizes its own input and output, which is correct, only
    requantized more often; with a BatchNorm to fold, the trace is needed and its error is raised."""
    try:
        graph = trace(net)
    except ValueError:
        if any(isinstance(m, FOLDABLE) for m in net.modules()):
            raise
        return Links()
    module = lambda node: net.get_submodule(node.target) if node.op == "call_module" else None  # noqa: E731
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found, owner = Links(), {}  # owner: node whose quantized output is a layer's (the layer, its BN, its ReLU)
    for node in graph.nodes:
        if not isinstance(module(node), QUANTIZABLE):
            continue
        last = node
        users = list(last.users)
        if len(users) == 1 and isinstance(module(users[0]), FOLDABLE):
            found.batchnorm[node.target], last = users[0].target, users[0]
        users = list(last.users)
        if len(users) == 1 and isinstance(module(users[0]), nn.ReLU) and calls[users[0].target] == 1:
            found.relu[node.target], last = users[0].target, users[0]
        owner[last] = node.target
    for node in graph.nodes:
        if not isinstance(module(node), QUANTIZABLE) or not node.args:
            continue
        producer = node.args[0]
        while (
            producer not in owner
            and isinstance(producer, torch.fx.Node)
            and len(producer.users) == 1
            and (isinstance(module(producer), PRESERVING) or producer.target in (torch.flatten, "flatten"))
        ):
            producer = producer.args[0]
        if producer in owner and len(producer.users) == 1:
            found.source[node.target] = owner[producer]
    return found


def instrument(net: nn.Module, average: float | None = 0.01) -> None:
    """Give every Linear / Conv2d of `net` that has none yet the quantization buffers and forward
    (FLOAT phase: nothing changes yet), link it with its neighbours (`links`), and record the edit.
    `average`: the observers' moving-average constant (None: running min / max, for calibration)."""
    found = links(net)
    for name, layer in net.named_modules():
        if not isinstance(layer, QUANTIZABLE):
            continue
        layer.observer_average = average
        if not hasattr(layer, "quant_phase"):
            device = layer.weight.device
            layer.register_buffer("quant_phase", torch.tensor(int(Phase.FLOAT), device=device))
            layer.register_buffer("input_range", torch.tensor([math.inf, -math.inf], device=device))
            layer.register_buffer("output_range", torch.tensor([math.inf, -math.inf], device=device))
            layer.forward = types.MethodType(fake_quant_forward, layer)
        # plain references, not submodules, so no new state-dict keys
        layer.__dict__["folded_bn"] = net.get_submodule(found.batchnorm[name]) if name in found.batchnorm else None
        layer.__dict__["fused_relu"] = name in found.relu
        layer.__dict__["input_from"] = net.get_submodule(found.source[name]) if name in found.source else None
    for name, partner in [*found.batchnorm.items(), *found.relu.items()]:
        absorbed = net.get_submodule(partner)
        absorbed.__dict__["absorbed_into"] = net.get_submodule(name)
        absorbed.forward = types.MethodType(absorbed_forward, absorbed)
    if not any(edit.get("kind") == EDIT for edit in edits(net)):
        record(net, {"kind": EDIT, "step": EDIT})


def set_phase(net: nn.Module, phase: Phase) -> None:
    for layer in quantized_layers(net).values():
        layer.quant_phase.fill_(int(phase))


def observe(value_range: torch.Tensor, x: torch.Tensor, average: float | None) -> None:
    """Update a (min, max) range buffer with `x`: a moving average, or the running min / max."""
    low, high = x.detach().min(), x.detach().max()
    if value_range[0] > value_range[1]:  # never observed
        value_range.copy_(torch.stack([low, high]))
    elif average is None:
        value_range.copy_(torch.stack([torch.minimum(value_range[0], low), torch.maximum(value_range[1], high)]))
    else:
        value_range.add_(average * (torch.stack([low, high]) - value_range))


def activation_qparams(value_range: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 affine scale and zero point of a (min, max) range widened to hold 0 (torch's observers'
    formula: zero_point = qmin - round(min / scale))."""
    low, high = torch.clamp(value_range[0], max=0.0), torch.clamp(value_range[1], min=0.0)
    scale = torch.clamp((high - low) / (ACT_QMAX - ACT_QMIN), min=1e-8).float()
    zero_point = torch.clamp(ACT_QMIN - torch.round(low / scale), ACT_QMIN, ACT_QMAX).int()
    return scale.reshape(1), zero_point.reshape(1)


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scales: max |w| / 127."""
    return torch.clamp(weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))) / WEIGHT_QMAX, min=1e-12).float()


def folded_weight_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and bias with its paired BatchNorm folded in (running statistics)."""
    weight, bias = layer.weight, layer.bias
    bn = layer.__dict__.get("folded_bn")
    if bn is None:
        return weight, bias
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = weight * factor.reshape(-1, *[1] * (weight.dim() - 1))
    bias = ((bias if bias is not None else 0) - bn.running_mean) * factor + bn.bias
    return weight, bias


def fake_quant_activation(x: torch.Tensor, value_range: torch.Tensor) -> torch.Tensor:
    if value_range[0] > value_range[1]:  # never observed: nothing to quantize with yet
        return x
    scale, zero_point = activation_qparams(value_range)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    scales = weight_scales(weight)
    zeros = torch.zeros_like(scales, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scales, zeros, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def apply_layer(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


def fake_quant_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of an instrumented layer (bound to it by `instrument`)."""
    phase = int(layer.quant_phase)
    if phase == Phase.FLOAT:
        return type(layer).forward(layer, x)
    observing = phase == Phase.OBSERVE and layer.training
    source = layer.__dict__["input_from"]
    if observing and source is None:
        observe(layer.input_range, x, layer.observer_average)
    x = fake_quant_activation(x, layer.input_range if source is None else source.output_range)
    weight, bias = folded_weight_bias(layer)
    y = apply_layer(layer, x, fake_quant_weight(weight), bias)
    if layer.__dict__["fused_relu"]:
        y = F.relu(y)
    if observing:
        observe(layer.output_range, y, layer.observer_average)
    return fake_quant_activation(y, layer.output_range)


def absorbed_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm folded into, or a ReLU fused into, the layer before it passes its input through
    while that layer is quantized (that layer computes it; a folded BatchNorm's statistics are then
    frozen, as the layer uses them)."""
    if int(module.__dict__["absorbed_into"].quant_phase) != Phase.FLOAT:
        return x
    return type(module).forward(module, x)


def float_copy(net: nn.Module) -> nn.Module:
    """A plain fp32 copy of `net`: the quantization buffers and forwards removed (what the fp32
    export traces; the instrumented forward branches on the phase, which torch.export cannot)."""
    net = copy.deepcopy(net)
    for module in net.modules():
        module.__dict__.pop("forward", None)
        for name in ("folded_bn", "fused_relu", "input_from", "absorbed_into"):
            module.__dict__.pop(name, None)
        for name in ("quant_phase", "input_range", "output_range"):
            module._buffers.pop(name, None)
    return net
