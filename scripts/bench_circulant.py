"""Block-circulant speed: where does an FFT layer beat the dense layer it replaces, and by how much?

Part 1, the crossover table: a square layer of width W (256-4096) as nn.Linear and as
BlockCirculantLinear with block b (8-1024, b <= W), eval mode, torch eager under inference_mode,
batch 1 and 64, one thread and all threads. Each pair is timed side by side (alternated, a dropped
warm-up round, median of `--repeats` measures of `--calls` forward calls) and printed as the ratio
circulant / dense latency: below 1 the FFT layer wins.

Part 2, a whole net: an MLP with hidden layers [W, W, W] (`--net-width`, default 2048) dense, and with
its hidden-to-hidden layers block-circulant (`model.circulant_block`, `--net-block`): forward latency in
torch eager and of each net's exported ONNX file in onnxruntime (the export writes the DFT as MatMuls
with the real DFT matrices: onnxruntime's `DFT` op measured slower than the dense layer), batch 64,
one thread, with the ONNX parity of each file.

Part 3 (`--parts accuracy`), the issue's accuracy figures on digits, each row `python -m recipes.train`
as a user runs it, same widths (MLP [512, 512]) and budget (40 epochs), seeds 0 1 2, one thread per run:
the dense net; the same net built block-circulant (`model.circulant_block=16`: the hidden-to-hidden
layer); and `recipe=circulant` (dense for 10 epochs, projected to block 16, fine-tuned). Test accuracy
mean +- std and the hidden layers' parameters (all but the first layer and the head).

    python scripts/bench_circulant.py                              # parts 1 and 2: a few minutes
    python scripts/bench_circulant.py --widths 2048 --blocks 64 --batches 64 --threads 1 --parts crossover
    python scripts/bench_circulant.py --parts accuracy --parallel 2   # 9 runs: about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's modules, not an installed copy

from callbacks.formats.onnx_files import compact, torch_onnx_export
from modules.nets.block_circulant import BlockCirculantLinear, fft_ops_in_export
from modules.nets.mlp import MLP

from launch import alternated, mean_std, train

ACCURACY_ROWS = {  # part 3: name -> (the overrides of its runs, the MLP's circulant_block)
    "dense [512, 512]": (["model.hidden=[512,512]", "trainer.max_epochs=40"], 0),
    "circulant b=16 from scratch": (
        ["model.hidden=[512,512]", "trainer.max_epochs=40", "model.circulant_block=16"],
        16,
    ),
    "recipe=circulant (b=16 at epoch 10)": (["recipe=circulant"], 16),
}


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


def onnx_file(net: nn.Module, x: torch.Tensor, path: Path, fft_ops: bool = False) -> Path:
    """The net's ONNX file as the project's export writes it (one file, dynamic batch, compacted); with
    `fft_ops`, the DFT as ONNX `DFT` ops instead of MatMuls with the DFT matrices."""
    with fft_ops_in_export() if fft_ops else contextlib.nullcontext():
        torch_onnx_export(net, (x,), path, opset=18)
    compact(path)
    return path


def whole_net(args: argparse.Namespace) -> None:
    """Part 2: the MLP dense and block-circulant, torch eager and onnxruntime, one thread, batch 64;
    the circulant net's ONNX file twice: the DFT as MatMuls (what the export writes) and as `DFT` ops."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape, width, block = (1, 8, 8), args.net_width, args.net_block
    dense = MLP(shape, 10, hidden=[width] * 3).eval()
    circulant = MLP(shape, 10, hidden=[width] * 3, circulant_block=block).eval()
    rows = {  # name -> (net, its ONNX file has DFT ops)
        "dense": (dense, False),
        f"circulant b={block}": (circulant, False),
        f"circulant b={block}, ONNX DFT ops": (circulant, True),
    }
    x = torch.randn(64, *shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    measures: dict[str, Callable[[], float]] = {}
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, (net, fft_ops)) in enumerate(rows.items()):
            path = onnx_file(net, x, Path(folder) / f"net{i}.onnx", fft_ops)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            with torch.inference_mode():
                parity = float(np.abs(session.run(None, feed)[0] - net(x).numpy()).max())
            sizes[name] = (sum(p.numel() for p in net.parameters()), os.path.getsize(path), parity)
            if not fft_ops:
                measures[f"{name} eager"] = timer(net, x, args.calls)
            measures[f"{name} onnx"] = lambda s=session, f=feed: _ort_ms(s, f, args.calls)
        times = {k: statistics.median(v) for k, v in alternated(measures, args.repeats).items()}
    print(f"\n## MLP [{width}, {width}, {width}] on 8x8 digits input, batch 64, one thread\n")
    print("| net | params | ONNX bytes | ONNX parity | eager ms | eager / dense | ONNX ms | ONNX / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (params, size, parity) in sizes.items():
        eager = times[f"{name.split(',')[0]} eager"]  # the DFT-ops row's net is the circulant row's
        onnx = times[f"{name} onnx"]
        print(
            f"| {name} | {params:,} | {size:,} | {parity:.1e} | {eager:.3f} | {eager / times['dense eager']:.3f} "
            f"| {onnx:.3f} | {onnx / times['dense onnx']:.3f} |"
        )


def hidden_params(block: int) -> int:
    """Parameters of the digits MLP [512, 512]'s layers between the first and the head."""
    net = MLP((1, 8, 8), 10, hidden=[512, 512], circulant_block=block)
    layers = [m for m in net if any(True for _ in m.parameters())]
    return sum(p.numel() for layer in layers[1:-1] for p in layer.parameters())


def accuracy(args: argparse.Namespace) -> None:
    """Part 3: test accuracy of the dense, from-scratch circulant and projected MLP over seeds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [(name, seed) for name in ACCURACY_ROWS for seed in args.seeds]

    def run(job: tuple[str, int]) -> float:
        name, seed = job
        folder = args.out / f"row{list(ACCURACY_ROWS).index(name)}_seed{seed}"
        overrides = [*ACCURACY_ROWS[name][0], "threads=1", "logger=csv", "export=onnx", f"seed={seed}"]
        return train(folder, *overrides, env=env)["metrics"]["test/acc"]

    with ThreadPoolExecutor(args.parallel) as pool:
        accs = dict(zip(jobs, pool.map(run, jobs), strict=True))
    dense = hidden_params(0)
    print(f"\n## Digits, MLP [512, 512], 40 epochs, seeds {args.seeds}\n")
    print("| net | hidden-layer params | fewer | test acc % |")
    print("|---|---|---|---|")
    for name, (_, block) in ACCURACY_ROWS.items():
        params = hidden_params(block)
        values = [accs[(name, seed)] for seed in args.seeds]
        print(f"| {name} | {params:,} | {dense / params:.1f}x | {mean_std(values)} |")


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
    parser.add_argument("--parts", nargs="+", choices=["crossover", "net", "accuracy"], default=["crossover", "net"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="part 3's seeds")
    parser.add_argument("--parallel", type=int, default=1, help="part 3's runs at once (each on one thread)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_circulant"), help="part 3's run dirs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    parts = {"crossover": crossover, "net": whole_net, "accuracy": accuracy}
    for part in args.parts:
        parts[part](args)


if __name__ == "__main__":
    main()
