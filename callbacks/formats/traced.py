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

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from callbacks.surgery.quantize import float_copy, int8_module, is_quantized, quantized_layers

FORMATS = ("onnx", "program", "onnx_int8", "dcz")
DEFAULT_FORMATS = ("onnx", "program")
FILE_NAMES = {"onnx": "model.onnx", "program": "model.pt2", "onnx_int8": "model_int8.onnx", "dcz": "model.dcz"}
INT8_FORMATS = ("onnx_int8",)
EXACT = ("dcz",)  # formats that must give the trained net's outputs bit for bit
# onnxruntime ops that compute in int8 (QGemm: its fused Linear; ConvInteger / MatMulInteger: dynamic)
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")
# Loggers of torch.onnx's dynamo exporter passes: at INFO they report every pass ("No unused functions to
# remove", "Skipping constant folding ...") on each export, and the run's logging config shows INFO.
ONNX_PASS_LOGGERS = ("onnxscript", "onnx_ir")


class ExportError(RuntimeError):
    """An artifact could not be written, loaded back, or does not match the trained net."""


Inputs = tuple[torch.Tensor, ...]  # the net's positional inputs, batch first (one image tensor; z and labels)
Runner = Callable[[tuple[np.ndarray, ...]], np.ndarray]


def _dynamic_batch(example: Inputs) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch")
    return tuple({0: batch} for _ in example)


def _input_names(example: Inputs) -> list[str]:
    return ["input"] if len(example) == 1 else [f"input{i}" for i in range(len(example))]


@contextlib.contextmanager
def quiet_onnx_passes() -> Iterator[None]:
    """The exporter's pass loggers at WARNING for the export (their warnings and errors still show)."""
    loggers = [logging.getLogger(name) for name in ONNX_PASS_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def torch_onnx_export(net: nn.Module, example: Inputs, path: Path, opset: int) -> None:
    """Export with torch.onnx (dynamo), a dynamic batch dimension, one file."""
    with quiet_onnx_passes():
        torch.onnx.export(
            net,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes=_dynamic_batch(example),
            opset_version=opset,
            input_names=_input_names(example),
            output_names=["logits"],
            external_data=False,
            verbose=False,
        )


def write_onnx(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.onnx (dynamo), compact the file and return an onnxruntime runner of it."""
    torch_onnx_export(net, example, path, opset)
    compact(path)
    return onnx_runner(path, example)


def compact(path: Path) -> None:
    """Drop from the ONNX file at `path` the exporter's per-node metadata (source stack, module
    scopes) and doc strings, its shape annotations and the opset imports no node uses, and give its
    nodes and inner tensors short names (the graph's input and output names stay): onnxruntime needs
    none of that text, and in an int8 MLP it weighs a third of its weights. Both the fp32 and the
    int8 file get it, so their size ratio is that of what they compute with."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    _shorten_names(model.graph)
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def _shorten_names(graph: Any) -> None:
    """Nodes unnamed (the name is optional in ONNX) and every tensor that is not a graph input or
    output renamed to a short base-36 name. Graphs with subgraphs (If, Loop) are left as they are."""
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return
    kept = {value.name for value in [*graph.input, *graph.output]}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in kept:  # "" marks an omitted optional input
            return name
        if name not in short:
            short[name] = f"_{_base36(len(short))}"
        return short[name]

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of the file at `path`: all graph optimizations, one intra-op thread
    per physical core (the defaults), and threads that sleep between runs instead of spinning: a
    spinning pool steals the cores from the other sessions and processes timed beside it (on a busy
    2-core machine it made an fp32 MLP look 5-10x slower than the same file timed alone)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: Path, example: Inputs) -> Runner:
    """An onnxruntime session of the file at `path` (`onnx_session`), as a runner of the net's inputs."""
    names = _input_names(example)
    session = onnx_session(path)
    return lambda xs: session.run(None, dict(zip(names, xs)))[0]


def write_program(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.export, save the .pt2 and return a runner of the program loaded back."""
    torch.export.save(torch.export.export(net, example, dynamic_shapes=_dynamic_batch(example)), str(path))
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
        torch_onnx_export(int8_module(net), example, qdq, opset)
        optimize(qdq, path, "ORT_ENABLE_EXTENDED")
    finally:
        qdq.unlink(missing_ok=True)
    compact(path)
    return onnx_runner(path, example)


def optimize(path: Path, out: Path, level: str) -> None:
    """Save the graph onnxruntime runs for the ONNX file at `path` after its graph optimizations up to
    `level` (a GraphOptimizationLevel name) to `out`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(out)
    # Errors only: at ORT_ENABLE_ALL onnxruntime warns that the saved graph is CPU-specific, which is
    # what runtime_ops reads it for (the shipped file is saved at the portable ORT_ENABLE_EXTENDED).
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runtime_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime really runs (after its graph optimizations, which fuse QDQ
    groups into int8 kernels), read back from SessionOptions.optimized_model_filepath."""
    import onnx

    optimized = path.with_name(f"{path.stem}.optimized.onnx")
    optimize(path, optimized, "ORT_ENABLE_ALL")
    counts: dict[str, int] = {}
    for node in onnx.load(str(optimized)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    optimized.unlink()
    return counts


def initializer_bytes(path: Path) -> dict[str, int]:
    """Bytes of the ONNX file's initializers (weights, scales, biases) by element type."""
    import onnx
    from onnx import numpy_helper

    sizes: dict[str, int] = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(tensor)
        sizes[array.dtype.name] = sizes.get(array.dtype.name, 0) + array.nbytes
    return sizes


def write_dcz(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Write Deep Compression's file (callbacks/formats/dcz.py) and return a runner of the net decoded from it."""
    from callbacks.formats import dcz

    dcz.write(net, path)
    decoded = dcz.load_into(copy.deepcopy(net), path).eval()

    def run(xs: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.no_grad():
            return decoded(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


WRITERS = {"onnx": write_onnx, "program": write_program, "onnx_int8": write_onnx_int8, "dcz": write_dcz}


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
) -> dict[str, Any]:
    """Write each format of `net`, traced with `example` (the task's example input), to `out_dir`,
    run it on `inputs` (the task's parity inputs, e.g. the test images) and compare it with `net`
    (an int8 format with the fake-quantized net, the others with its fp32 version).

    Returns the `export` section of results.json (paths relative to `out_dir`'s parent).
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ExportError(f"export.formats has unknown {unknown}: choose from {', '.join(FORMATS)}")
    net = copy.deepcopy(net).cpu().eval()
    quantized = is_quantized(net)
    if not quantized and any(f in INT8_FORMATS for f in formats):
        raise ExportError(
            "export.formats has onnx_int8 but the net is not quantized: add qat or ptq to compress "
            "(e.g. compress=[qat]), or drop onnx_int8"
        )
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
        int8 = fmt in INT8_FORMATS
        try:
            run = WRITERS[fmt](net if int8 else fp32_net, example, path, opset)
            outputs = run(tuple(x.numpy() for x in inputs))
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported the same way
            path.unlink(missing_ok=True)
            raise ExportError(
                f"export to {fmt} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            ) from err
        expected = reference["int8" if int8 else "fp32"]
        diff = float(np.abs(outputs - expected).max())
        agreement = float((outputs.argmax(1) == expected.argmax(1)).mean())
        if fmt in EXACT and diff != 0:
            path.unlink(missing_ok=True)
            raise ExportError(f"{fmt} export does not give the trained net back bit for bit: max |diff| {diff:.2e}")
        limit, needed = (int8_atol, int8_agreement) if int8 else (atol, 1.0)
        if diff > limit or agreement < needed:
            path.unlink(missing_ok=True)
            keys = ("export.int8_atol", "export.int8_agreement") if int8 else ("export.atol", "needs")
            against = "the fake-quantized net" if int8 else "the trained net"
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
