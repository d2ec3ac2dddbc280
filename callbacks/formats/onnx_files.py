"""ONNX files: writing one with torch.onnx (dynamic batch, the exporter's pass logs quiet), compacting
it, and reading it back with onnxruntime: a session, a runner of the net's inputs, the graph it
really runs (op counts after its graph optimizations) and the bytes of its weights."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ORT_QUANTIZATION_LOGGERS",
    "Inputs",
    "Runner",
    "compact",
    "dynamic_batch",
    "initializer_bytes",
    "input_names",
    "onnx_runner",
    "onnx_session",
    "optimize",
    "quiet_onnx_passes",
    "runtime_ops",
    "torch_onnx_export",
]

# Loggers of torch.onnx's dynamo exporter passes: at INFO they report every pass ("No unused functions to
# remove", "Skipping constant folding ...") on each export, and the run's logging config shows INFO.
ONNX_PASS_LOGGERS = ("onnxscript", "onnx_ir")
# Loggers of onnxruntime's quantization tool: its quantizers log through the root logger (`logging.info`, one
# 'Quantization parameters for tensor ... not specified' line per tensor), its pre-processing through its own.
ORT_QUANTIZATION_LOGGERS = ("root", "onnxruntime.quantization")

Inputs = tuple[torch.Tensor, ...]  # the net's positional inputs, batch first (one image tensor; z and labels)
Runner = Callable[[tuple[np.ndarray, ...]], np.ndarray]


def dynamic_batch(example: Inputs) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch")
    return tuple({0: batch} for _ in example)


def input_names(example: Inputs) -> list[str]:
    return ["input"] if len(example) == 1 else [f"input{i}" for i in range(len(example))]


@contextlib.contextmanager
def quiet_onnx_passes(names: Sequence[str] = ONNX_PASS_LOGGERS) -> Iterator[None]:
    """The loggers `names` (the exporter's passes; ORT_QUANTIZATION_LOGGERS around onnxruntime's
    quantization) at WARNING for the block, their levels restored after (warnings and errors still show)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def torch_onnx_export(
    net: nn.Module, example: Inputs, path: Path, opset: int, translations: dict[Any, Any] | None = None
) -> None:
    """Export with torch.onnx (dynamo), a dynamic batch dimension, one file; `translations` give the ONNX
    form of the project's own ops (callbacks/surgery/int8_ops.py)."""
    with quiet_onnx_passes():
        torch.onnx.export(
            net,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes=dynamic_batch(example),
            opset_version=opset,
            input_names=input_names(example),
            output_names=["logits"],
            external_data=False,
            verbose=False,
            custom_translation_table=translations,
        )


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
    names = input_names(example)
    session = onnx_session(path)
    return lambda xs: session.run(None, dict(zip(names, xs)))[0]


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
