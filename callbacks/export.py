"""Final export: ONNX (dynamic batch) and a `torch.export` program, each loaded back and checked
against the trained net on the test set (max |diff| and top-1 agreement), plus latency at a fixed
batch. A failed export or a parity miss raises: a model that does not match is not shipped."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMATS = ("onnx", "program")
FILE_NAMES = {"onnx": "model.onnx", "program": "model.pt2"}


class ExportError(RuntimeError):
    """An artifact could not be written, loaded back, or does not match the trained net."""


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch")},)


def write_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> Callable[[np.ndarray], np.ndarray]:
    """Export with torch.onnx (dynamo) and return an onnxruntime runner of the file."""
    import onnxruntime as ort

    torch.onnx.export(net, (example,), str(path), dynamo=True, dynamic_shapes=_dynamic_batch(), opset_version=opset,
                      input_names=["input"], output_names=["logits"], external_data=False, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def write_program(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> Callable[[np.ndarray], np.ndarray]:
    """Export with torch.export, save the .pt2 and return a runner of the program loaded back."""
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=_dynamic_batch()), str(path))
    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


WRITERS = {"onnx": write_onnx, "program": write_program}


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


def export_and_verify(
    net: nn.Module,
    batches: Iterable[Any],
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
    batch_size: int = 256,
    repeats: int = 30,
    atol: float = 1e-4,
    opset: int = 18,
) -> dict[str, Any]:
    """Write each format to `out_dir`, run it on every input of `batches` and compare it with `net`.

    Returns the `export` section of results.json (paths relative to `out_dir`'s parent).
    """
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ExportError(f"export.formats has unknown {unknown}: choose from {', '.join(FORMATS)}")
    net = copy.deepcopy(net).cpu().eval()
    inputs = torch.cat([batch[0] for batch in batches]).cpu().float()
    with torch.no_grad():
        reference = net(inputs).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"batch_size": batch_size, "latency_ms": {}}
    timing_batch = inputs[:batch_size].repeat(-(-batch_size // len(inputs)), 1, 1, 1)[:batch_size]
    with torch.no_grad():
        report["latency_ms"]["torch_fp32"] = round(median_ms(lambda: net(timing_batch), repeats), 4)
    diffs, agreements = [], []
    for fmt in formats:
        path = out_dir / FILE_NAMES[fmt]
        try:
            run = WRITERS[fmt](net, inputs[:2], path, opset)
            outputs = run(inputs.numpy())
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported the same way
            path.unlink(missing_ok=True)
            raise ExportError(f"export to {fmt} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
        diff = float(np.abs(outputs - reference).max())
        agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
        if diff > atol or agreement < 1.0:
            path.unlink(missing_ok=True)
            raise ExportError(f"{fmt} export does not match the trained net: max |diff| {diff:.2e} (export.atol={atol}), "
                              f"top-1 agreement {agreement:.4f} (needs 1.0)")
        report[fmt] = f"{out_dir.name}/{path.name}"
        diffs.append(diff)
        agreements.append(agreement)
        report["latency_ms"]["onnx" if fmt == "onnx" else "program"] = round(
            median_ms(lambda: run(timing_batch.numpy()), repeats), 4)
    report["parity_max_abs_diff"] = max(diffs)
    report["top1_agreement"] = min(agreements)
    return report
