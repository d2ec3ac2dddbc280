"""Final export: ONNX (dynamic batch) and a `torch.export` program of a task's shipped net, traced
with the task's example input, each loaded back and checked against the trained net on the task's
parity inputs (the test images for a classifier: max |diff| and top-1 agreement), plus latency at a
fixed batch (every artifact and the torch net timed in turn, so their ratios hold on a busy machine).
A failed export or a parity miss raises: a model that does not match is not shipped.

A quantized net (QAT / PTQ, callbacks/surgery/quantize.py) has two references: the fp32 formats write its
fp32 version (quantization off) and match it as tightly as a plain net; `onnx_int8` writes the int8
model (int8 weights on disk, a QOperator graph of onnxruntime's int8 kernels) and must agree with
the fake-quantized net on the top-1 class of at least `int8_agreement` of the inputs, its logits
within `int8_atol` (one rounding step of an activation can move a logit by a few scales)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from callbacks.formats.onnx_files import (
    ORT_QUANTIZATION_LOGGERS,
    Inputs,
    Runner,
    compact,
    dynamic_batch,
    initializer_bytes,
    onnx_runner,
    optimize,
    quiet_onnx_passes,
    runtime_ops,
    torch_onnx_export,
)
from callbacks.surgery.int8_layers import int8_module
from callbacks.surgery.int8_ops import onnx_translations
from callbacks.surgery.quantize import float_copy, is_quantized, quantized_layers
from modules.nets.lstm import exportable

__all__ = ["DEFAULT_FORMATS", "FILE_NAMES", "FORMATS", "ExportError", "export_and_verify"]

FORMATS = ("onnx", "program", "onnx_int8", "onnx_dynamic", "dcz")
DEFAULT_FORMATS = ("onnx", "program")
FILE_NAMES = {
    "onnx": "model.onnx",
    "program": "model.pt2",
    "onnx_int8": "model_int8.onnx",
    "onnx_dynamic": "model_dynamic.onnx",
    "dcz": "model.dcz",
}
INT8_FORMATS = ("onnx_int8", "onnx_dynamic")
DYNAMIC = ("onnx_dynamic",)  # int8 formats of a float net: compared with the fp32 net, not a fake-quantized one
EXACT = ("dcz",)  # formats that must give the trained net's outputs bit for bit
# onnxruntime ops that compute in int8 (QGemm: its fused Linear; ConvInteger / MatMulInteger and the
# fused DynamicQuantizeMatMul / DynamicQuantizeLSTM: dynamic)
INT8_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
)


class ExportError(RuntimeError):
    """An artifact could not be written, loaded back, or does not match the trained net."""


def write_onnx(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.onnx (dynamo), compact the file and return an onnxruntime runner of it."""
    torch_onnx_export(net, example, path, opset)
    compact(path)
    return onnx_runner(path, example)


def write_program(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.export, save the .pt2 and return a runner of the program loaded back."""
    torch.export.save(torch.export.export(net, example, dynamic_shapes=dynamic_batch(example)), str(path))
    module = torch.export.load(str(path)).module()

    def run(xs: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


def write_onnx_int8(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """The int8 module of a quantized net written by torch.onnx as a QDQ graph (int8 weight
    initializers, QuantizeLinear / DequantizeLinear around each layer), then saved as the QOperator
    graph onnxruntime's portable graph optimizations (ORT_ENABLE_EXTENDED: no CPU-specific layout)
    fuse it into: one QuantizeLinear at the input, QLinearConv / QGemm kernels with int32 biases,
    uint8 max-pools between them, one DequantizeLinear at the output. The file holds the kernels that
    run, without the dequantize / requantize pairs the QDQ form spells out around every layer."""
    qdq = path.with_name(f"{path.stem}.qdq.onnx")
    try:
        torch_onnx_export(int8_module(net), example, qdq, opset, onnx_translations())
        optimize(qdq, path, "ORT_ENABLE_EXTENDED")
    finally:
        qdq.unlink(missing_ok=True)
    compact(path)
    return onnx_runner(path, example)


def write_onnx_dynamic(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """The fp32 ONNX model with onnxruntime's dynamic quantization: int8 weights on disk, activations
    quantized at run time from their own range (MatMulInteger / DynamicQuantizeMatMul kernels, an ONNX
    LSTM node as DynamicQuantizeLSTM). No calibration and no training change, which suits sequence nets
    (an LSTM's or attention's MatMuls), whose activation ranges move with the input. onnxruntime's
    pre-processing folds constants first: torch.onnx computes an LSTM node's W and R (gates reordered
    by Slice / Concat), and the quantizer takes only initializer weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = path.with_name(f"{path.stem}.fp32.onnx")
    folded = path.with_name(f"{path.stem}.folded.onnx")
    try:
        torch_onnx_export(net, example, fp32, opset)
        with quiet_onnx_passes(ORT_QUANTIZATION_LOGGERS):  # an INFO line per tensor otherwise
            quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
            quantize_dynamic(str(folded), str(path), weight_type=QuantType.QInt8)
    finally:
        fp32.unlink(missing_ok=True)
        folded.unlink(missing_ok=True)
    compact(path)
    return onnx_runner(path, example)


def write_dcz(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Write Deep Compression's file (callbacks/formats/dcz.py) and return a runner of the net decoded from it."""
    from callbacks.formats import dcz

    dcz.write(net, path)
    decoded = dcz.load_into(copy.deepcopy(net), path).eval()

    def run(xs: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.no_grad():
            return decoded(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


WRITERS = {
    "onnx": write_onnx,
    "program": write_program,
    "onnx_int8": write_onnx_int8,
    "onnx_dynamic": write_onnx_dynamic,
    "dcz": write_dcz,
}


def median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time in ms of each of `fns` over `repeats` runs, after 3 warm-up runs, run in turn
    (round-robin), so that each sees the same machine load and their ratios hold on a busy machine."""
    for _ in range(3):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def as_inputs(batch: Any) -> Inputs:
    """A net's positional inputs as a tuple of CPU tensors (a single tensor is one input)."""
    return tuple(x.cpu() for x in batch) if isinstance(batch, (tuple, list)) else (batch.cpu(),)


def fixed_batch(inputs: Inputs, size: int) -> Inputs:
    """`inputs` cycled to exactly `size` samples (the latency batch)."""
    repeats = -(-size // len(inputs[0]))
    return tuple(x.repeat(repeats, *[1] * (x.dim() - 1))[:size] for x in inputs)


def export_and_verify(
    net: nn.Module,
    example: Any,
    inputs: Any,
    out_dir: Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    batch_size: int = 256,
    repeats: int = 30,
    atol: float = 1e-4,
    opset: int = 18,
    int8_atol: float = 1.0,
    int8_agreement: float = 0.99,
    where_applicable: Sequence[str] = (),
) -> dict[str, Any]:
    """Write each format of `net`, traced with `example` (the task's example input), to `out_dir`,
    run it on `inputs` (the task's parity inputs, e.g. the test images) and compare it with `net`
    (an int8 format with the fake-quantized net, the others with its fp32 version).

    `where_applicable`: formats of `formats` written only where they apply, skipped elsewhere instead
    of refused (export=all: onnx_int8 for a quantized net only).

    Returns the `export` section of results.json (paths relative to `out_dir`'s parent).
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ExportError(f"export.formats has unknown {unknown}: choose from {', '.join(FORMATS)}")
    net = copy.deepcopy(net).cpu().eval()
    quantized = is_quantized(net)
    if not quantized:
        formats = [f for f in formats if not (f in INT8_FORMATS and f not in DYNAMIC and f in where_applicable)]
    if not quantized and "onnx_int8" in formats:
        raise ExportError(
            "export.formats has onnx_int8 but the net is not quantized: add qat or ptq to compress "
            "(e.g. compress=[qat]), or export onnx_dynamic (onnxruntime's dynamic int8) instead"
        )
    if quantized and any(f in DYNAMIC for f in formats):
        raise ExportError("export.formats has onnx_dynamic but the net is quantized already: export onnx_int8")
    fp32_net = float_copy(net) if quantized_layers(net) else net
    example, inputs = as_inputs(example), as_inputs(inputs)
    with torch.no_grad():
        reference = {"fp32": fp32_net(*inputs).numpy(), "int8": net(*inputs).numpy()}
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"batch_size": batch_size, "latency_ms": {}}
    timing_batch = fixed_batch(inputs, batch_size)
    timing_arrays = tuple(x.numpy() for x in timing_batch)
    timed: dict[str, Callable[[], Any]] = {"torch_fp32": torch.no_grad()(lambda: fp32_net(*timing_batch))}
    diffs, agreements = [], []
    for fmt in formats:
        path = out_dir / FILE_NAMES[fmt]
        int8, static = fmt in INT8_FORMATS, fmt in INT8_FORMATS and fmt not in DYNAMIC
        try:
            # exportable: an LSTM with projections as a step-by-step copy (no exporter takes nn.LSTM's); an
            # exact format stores the net's own weights and must give its outputs back bit for bit
            written = net if static else fp32_net
            run = WRITERS[fmt](written if fmt in EXACT else exportable(written), example, path, opset)
            outputs = run(tuple(x.numpy() for x in inputs))
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported the same way
            path.unlink(missing_ok=True)
            raise ExportError(
                f"export to {fmt} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            ) from err
        expected = reference["int8" if static else "fp32"]
        diff = float(np.abs(outputs - expected).max())
        agreement = float((outputs.argmax(-1) == expected.argmax(-1)).mean())  # per sample, or per step of a sequence
        if fmt in EXACT and diff != 0:
            path.unlink(missing_ok=True)
            raise ExportError(f"{fmt} export does not give the trained net back bit for bit: max |diff| {diff:.2e}")
        limit, needed = (int8_atol, int8_agreement) if int8 else (atol, 1.0)
        if diff > limit or agreement < needed:
            path.unlink(missing_ok=True)
            keys = ("export.int8_atol", "export.int8_agreement") if int8 else ("export.atol", "needs")
            against = "the fake-quantized net" if static else "the trained net"
            raise ExportError(
                f"{fmt} export does not match {against}: max |diff| {diff:.2e} ({keys[0]}={limit}), "
                f"top-1 agreement {agreement:.4f} ({keys[1]} {needed})"
            )
        report[fmt] = f"{out_dir.name}/{path.name}"
        report.setdefault("bytes", {})[fmt] = path.stat().st_size
        timed[fmt] = lambda run=run: run(timing_arrays)
        if int8:
            kernels = runtime_ops(path)
            report["int8"] = {
                "parity_max_abs_diff": diff,
                "top1_agreement": agreement,
                "file_bytes": path.stat().st_size,
                "initializer_bytes": initializer_bytes(path),
                "kernels": {op: n for op, n in kernels.items() if op in INT8_KERNELS},
            }
            continue
        diffs.append(diff)
        agreements.append(agreement)
    report["latency_ms"] = median_ms(timed, repeats)
    if diffs:
        report["parity_max_abs_diff"] = max(diffs)
        report["top1_agreement"] = min(agreements)
    return report
