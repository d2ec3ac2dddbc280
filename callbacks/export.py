"""Final export: ONNX (dynamic batch) and a `torch.export` program of a task's shipped net, traced
with the task's example input, each loaded back and checked against the trained net on the task's
parity inputs (the test images for a classifier: max |diff| and top-1 agreement), plus latency at a
fixed batch. A failed export or a parity miss raises: a model that does not match is not shipped."""

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

FORMATS = ("onnx", "program", "dcz")
# Loggers of torch.onnx's dynamo exporter passes: at INFO they report every pass ("No unused functions to
# remove", "Skipping constant folding ...") on each export, and the run's logging config shows INFO.
ONNX_PASS_LOGGERS = ("onnxscript", "onnx_ir")
FILE_NAMES = {"onnx": "model.onnx", "program": "model.pt2", "dcz": "model.dcz"}
EXACT = ("dcz",)  # formats that must give the trained net's outputs bit for bit


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


def write_onnx(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.onnx (dynamo) and return an onnxruntime runner of the file."""
    import onnxruntime as ort

    names = _input_names(example)
    with quiet_onnx_passes():
            torch.onnx.export(net, example, str(path), dynamo=True, dynamic_shapes=_dynamic_batch(example),
                          opset_version=opset, input_names=names, output_names=["logits"], external_data=False,
                          verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda xs: session.run(None, dict(zip(names, xs)))[0]


def write_program(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Export with torch.export, save the .pt2 and return a runner of the program loaded back."""
    torch.export.save(torch.export.export(net, example, dynamic_shapes=_dynamic_batch(example)), str(path))
    module = torch.export.load(str(path)).module()

    def run(xs: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


def write_dcz(net: nn.Module, example: Inputs, path: Path, opset: int) -> Runner:
    """Write Deep Compression's file (callbacks/dcz.py) and return a runner of the net decoded from it."""
    from callbacks import dcz

    dcz.write(net, path)
    decoded = dcz.load_into(copy.deepcopy(net), path).eval()

    def run(xs: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.no_grad():
            return decoded(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


WRITERS = {"onnx": write_onnx, "program": write_program, "dcz": write_dcz}


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn` in ms over `repeats` runs, after 3 warm-up runs."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


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
    formats: Sequence[str] = FORMATS,
    batch_size: int = 256,
    repeats: int = 30,
    atol: float = 1e-4,
    opset: int = 18,
) -> dict[str, Any]:
    """Write each format of `net`, traced with `example` (the task's example input), to `out_dir`,
    run it on `inputs` (the task's parity inputs, e.g. the test images) and compare it with `net`.

    Returns the `export` section of results.json (paths relative to `out_dir`'s parent).
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ExportError(f"export.formats has unknown {unknown}: choose from {', '.join(FORMATS)}")
    net = copy.deepcopy(net).cpu().eval()
    example, inputs = as_inputs(example), as_inputs(inputs)
    with torch.no_grad():
        reference = net(*inputs).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"batch_size": batch_size, "latency_ms": {}}
    timing_batch = fixed_batch(inputs, batch_size)
    timing_arrays = tuple(x.numpy() for x in timing_batch)
    with torch.no_grad():
        report["latency_ms"]["torch_fp32"] = round(median_ms(lambda: net(*timing_batch), repeats), 4)
    diffs, agreements = [], []
    for fmt in formats:
        path = out_dir / FILE_NAMES[fmt]
        try:
            run = WRITERS[fmt](net, example, path, opset)
            outputs = run(tuple(x.numpy() for x in inputs))
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported the same way
            path.unlink(missing_ok=True)
            raise ExportError(f"export to {fmt} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
        diff = float(np.abs(outputs - reference).max())
        agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
        if fmt in EXACT and diff != 0:
            path.unlink(missing_ok=True)
            raise ExportError(f"{fmt} export does not give the trained net back bit for bit: max |diff| {diff:.2e}")
        if diff > atol or agreement < 1.0:
            path.unlink(missing_ok=True)
            raise ExportError(f"{fmt} export does not match the trained net: max |diff| {diff:.2e} (export.atol={atol}), "
                              f"top-1 agreement {agreement:.4f} (needs 1.0)")
        report[fmt] = f"{out_dir.name}/{path.name}"
        report.setdefault("bytes", {})[fmt] = path.stat().st_size
        diffs.append(diff)
        agreements.append(agreement)
        report["latency_ms"][fmt] = round(
            median_ms(lambda: run(timing_arrays), repeats), 4)
    report["parity_max_abs_diff"] = max(diffs)
    report["top1_agreement"] = min(agreements)
    return report
