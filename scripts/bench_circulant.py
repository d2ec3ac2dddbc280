"""Block-circulant speed: where does an FFT layer beat the dense layer it replaces, and by how much?

Part 1, the crossover table: a square layer of width W (256-4096) as nn.Linear and as
BlockCirculantLinear with block b (8-1024, b <= W), eval mode, torch eager under inference_mode,
batch 1 and 64, one thread and all threads. Each pair is timed side by side (alternated, a dropped
warm-up round, median of `--repeats` measures of `--calls` forward calls) and printed as the ratio
circulant / dense latency: below 1 the FFT layer wins.

Part 2, a whole net: an MLP with hidden layers [W, W, W] (`--net-width`, default 2048) dense, and with
its hidden-to-hidden layers block-circulant (`model.circulant_block`, `--net-block`): forward latency in
torch eager and of each net's exported ONNX file in onnxruntime (the FFT as ONNX `DFT`), batch 64,
one thread, with the ONNX parity of each file.

    python scripts/bench_circulant.py                              # the whole table: a few minutes
    python scripts/bench_circulant.py --widths 2048 --blocks 64 --batches 64 --threads 1   # the issue's point
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's modules, not an installed copy

from callbacks.formats.onnx_files import compact, torch_onnx_export
from modules.nets.block_circulant import BlockCirculantLinear
from modules.nets.mlp import MLP

from launch import alternated


def timer(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, calls: int) -> Callable[[], float]:
    """A measure: ms per forward call of `net` on `x`, over `calls` calls."""

    def measure() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(calls):
                net(x)
            return 1000 * (time.perf_counter() - start) / calls

    return measure


def layer_ratio(width: int, block: int, batch: int, calls: int, repeats: int) -> tuple[float, float]:
    """(dense ms, circulant ms) of a width x width layer, medians of alternated measures."""
    torch.manual_seed(0)
    dense, circulant = nn.Linear(width, width).eval(), BlockCirculantLinear(width, width, block).eval()
    x = torch.randn(batch, width)
    times = alternated({"dense": timer(dense, x, calls), "circulant": timer(circulant, x, calls)}, repeats)
    return statistics.median(times["dense"]), statistics.median(times["circulant"])


def crossover(args: argparse.Namespace) -> None:
    """Part 1: one row per (threads, batch, width), one column per block."""
    print("\n## Layer latency: block-circulant / dense (torch eager, inference; below 1: the FFT layer is faster)\n")
    blocks = [b for b in args.blocks]
    print("| threads | batch | width | dense ms | " + " | ".join(f"b={b}" for b in blocks) + " |")
    print("|---|---|---|---|" + "---|" * len(blocks))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            for width in args.widths:
                cells, dense_ms = [], None
                for block in blocks:
                    if block > width:
                        cells.append("-")
                        continue
                    dense_ms, circulant_ms = layer_ratio(width, block, batch, args.calls, args.repeats)
                    cells.append(f"{circulant_ms / dense_ms:.3f}")
                print(f"| {threads} | {batch} | {width} | {dense_ms:.3f} | " + " | ".join(cells) + " |", flush=True)


def onnx_file(net: nn.Module, x: torch.Tensor, folder: Path, name: str) -> Path:
    """The net's ONNX file as the project's export writes it (one file, dynamic batch, compacted)."""
    path = folder / f"{name}.onnx"
    torch_onnx_export(net, (x,), path, opset=18)
    compact(path)
    return path


def whole_net(args: argparse.Namespace) -> None:
    """Part 2: the MLP dense and block-circulant, torch eager and onnxruntime, one thread, batch 64."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape, width = (1, 8, 8), args.net_width
    nets = {
        "dense": MLP(shape, 10, hidden=[width] * 3).eval(),
        f"circulant b={args.net_block}": MLP(shape, 10, hidden=[width] * 3, circulant_block=args.net_block).eval(),
    }
    x = torch.randn(64, *shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    measures: dict[str, Callable[[], float]] = {}
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, net in nets.items():
            path = onnx_file(net, x, Path(folder), name.split()[0])
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            with torch.inference_mode():
                parity = float(np.abs(session.run(None, feed)[0] - net(x).numpy()).max())
            rows[name] = (sum(p.numel() for p in net.parameters()), os.path.getsize(path), parity)
            measures[f"{name} eager"] = timer(net, x, args.calls)
            measures[f"{name} onnx"] = lambda s=session, f=feed: _ort_ms(s, f, args.calls)
        times = {k: statistics.median(v) for k, v in alternated(measures, args.repeats).items()}
    print(f"\n## MLP [{width}, {width}, {width}] on 8x8 digits input, batch 64, one thread\n")
    print("| net | params | ONNX bytes | ONNX parity | eager ms | eager / dense | ONNX ms | ONNX / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (params, size, parity) in rows.items():
        eager, onnx = times[f"{name} eager"], times[f"{name} onnx"]
        print(
            f"| {name} | {params:,} | {size:,} | {parity:.1e} | {eager:.3f} | {eager / times['dense eager']:.3f} "
            f"| {onnx:.3f} | {onnx / times['dense onnx']:.3f} |"
        )


def _ort_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return 1000 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--blocks", nargs="+", type=int, default=[8, 16, 64, 256, 1024])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    parser.add_argument("--calls", type=int, default=10, help="forward calls per timed measure")
    parser.add_argument("--repeats", type=int, default=5, help="alternated measures per pair (median reported)")
    parser.add_argument("--net-width", type=int, default=2048, help="hidden width of part 2's MLP")
    parser.add_argument("--net-block", type=int, default=64, help="circulant block of part 2's MLP")
    parser.add_argument("--skip-net", action="store_true", help="part 1 only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    crossover(args)
    if not args.skip_net:
        whole_net(args)


if __name__ == "__main__":
    main()
