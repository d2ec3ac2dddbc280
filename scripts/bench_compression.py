"""Compression benchmark: the dense baseline and each compression recipe on the same net (MLP
[300, 100]), data (digits), seeds and epoch budget, in one table.

Each row is `python -m recipes.train recipe=NAME trainer.max_epochs=E export=onnx seed=S`, as a user
runs it (`export=dcz` for the rows whose recipe ships a .dcz: it writes the ONNX file too). Parameters, compressed bytes (the sparse encoding of callbacks/formats/size_report.py) and ratio come
from results.json; test accuracy is the mean over seeds; the onnxruntime latency of every row's
exported model is then timed side by side in this one process (round-robin, median of repeats, one
fixed batch), and reported as a ratio to the dense model's.

    python scripts/bench_compression.py                  # seeds 0 1 2, 40 epochs: about 3 minutes on 2 CPU cores
    python scripts/bench_compression.py --seeds 0 --epochs 20 --batch 256 --out outputs/bench

Block pruning (recipe=block_prune, resnet18) against the unpruned resnet18 at its budget, with the
FLOPs each run's removal saved:

    python scripts/bench_compression.py --recipes baseline block_prune --epochs 20 --overrides model=resnet18

The int8 rows (ptq, qat, prune_qat) export with export=int8 and are timed as their int8 ONNX model
(onnxruntime's int8 kernels), beside the same run's fp32 ONNX model; `artifact bytes` is the file
that ships (int8 for those rows). A convnet at 32 px on 3 channels (digits resized, channel
replicated), where int8 convolutions have enough work to win:

    python scripts/bench_compression.py --recipes baseline ptq qat --epochs 20 \
        --overrides model=convnet data.image_size=32 data.channels=3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from launch import mean_std, train

RECIPES = [
    "baseline",
    "prune",
    "hidden_prune",
    "svd",
    "dsd",
    "ptq",
    "qat",
    "prune_qat",
    "binary",
    "ternary",
    "kmeans",
    "deep_compression",
]
INT8 = ("ptq", "qat", "prune_qat")  # rows that ship an int8 model (export=int8)
DCZ = ("binary", "ternary", "kmeans", "deep_compression")  # recipes whose artifact is model.dcz
STAGES = ("pruned", "quantized", "huffman")  # Han's Table 1 columns, from results.json's compression.stages


def export_of(name: str) -> str:
    """The export preset of a row: int8 ONNX, Deep Compression's file (with its fp32 ONNX), or fp32 ONNX."""
    return "int8" if name in INT8 else "dcz" if name in DCZ else "onnx"


def onnx_latencies(files: dict[str, Path], batch: int, rounds: int) -> dict[str, float]:
    """Median ms per call of each ONNX file on one random batch, timed round-robin so that every
    model sees the same machine load. Every session alike, as the export times them
    (callbacks/formats/onnx_files.py: onnx_session): all graph optimizations, one intra-op thread per physical core,
    no spinning between runs (the idle sessions' spinning threads would steal the timed one's cores)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        name: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for name, f in files.items()
    }
    first = next(iter(sessions.values())).get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((batch, *first.shape[1:])).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(10):
                session.run(None, {first.name: x})
            times[name].append(100 * (time.perf_counter() - start))  # ms per call
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40, help="the epoch budget of every row")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the latency measurement")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds of 10 calls per model")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_compression"))
    parser.add_argument("--overrides", nargs="*", default=[], help="overrides of every row, e.g. model=convnet")
    parser.add_argument(
        "--reuse", action="store_true", help="read a row's results.json where --out has it instead of training it again"
    )
    args = parser.parse_args()

    def row(name: str, seed: int) -> dict:
        run_dir = args.out / name / f"seed{seed}"
        if args.reuse and (run_dir / "results.json").is_file():
            return json.loads((run_dir / "results.json").read_text())
        return train(
            run_dir,
            f"recipe={name}",
            f"trainer.max_epochs={args.epochs}",
            f"export={export_of(name)}",
            "logger=csv",
            f"seed={seed}",
            *args.overrides,
        )

    results = {name: [row(name, seed) for seed in args.seeds] for name in args.recipes}
    first_seed = {name: runs[0] for name, runs in results.items()}
    onnx_files = {
        name: args.out / name / f"seed{args.seeds[0]}" / r["export"]["onnx_int8" if name in INT8 else "onnx"]
        for name, r in first_seed.items()
    }
    shipped = {
        name: args.out / name / f"seed{args.seeds[0]}" / r["export"]["dcz"] if name in DCZ else onnx_files[name]
        for name, r in first_seed.items()
    }
    latency = onnx_latencies(onnx_files, args.batch, args.rounds)
    dense = latency[args.recipes[0]]
    net = " ".join(args.overrides) or "MLP [300, 100]"
    print(f"\n{net} on digits, {args.epochs} epochs, seeds {args.seeds}; onnxruntime at batch {args.batch}\n")
    print(
        "| recipe | params | nonzero | compressed bytes | ratio | test acc % | artifact bytes | ORT latency | vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    # the dense model's size, as every compressed run reports it for the net it started from
    reference = next(r[0]["compression"] for r in results.values() if "compression" in r[0])
    for name, runs in results.items():
        comp = runs[0].get("compression")
        if comp:
            size = (
                f"{comp['params']:,} | {comp['nonzero_params']:,} | {comp['compressed_bytes']:,} | {comp['ratio']:.2f}x"
            )
        else:
            size = (
                f"{reference['dense_params']:,} | {reference['dense_params']:,} | {reference['dense_bytes']:,} | 1.00x"
            )
        print(
            f"| {name} | {size} | {mean_std([r['metrics']['test/acc'] for r in runs])} "
            f"| {shipped[name].stat().st_size:,} | {latency[name]:.3f} ms | {latency[name] / dense:.2f}x |"
        )
    int8_rows = [name for name in results if name in INT8]
    if int8_rows:
        print(
            "\nint8 vs fp32 ONNX of the same run: file bytes, results.json export.latency_ms at export.batch_size "
            f"(mean over seeds), and both files of seed {args.seeds[0]} timed side by side here (round-robin, "
            f"medians of {args.rounds} rounds, batch {args.batch}):\n"
        )
        print(
            "| recipe | int8 / fp32 bytes | fp32 ms (export) | int8 ms (export) | speed-up (export) "
            "| fp32 ms (side by side) | int8 ms (side by side) | speed-up (side by side) | int8 kernels "
            "| int8 top-1 agreement |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in int8_rows:
            exports = [r["export"] for r in results[name]]
            fp32 = [e["latency_ms"]["onnx"] for e in exports]
            int8 = [e["latency_ms"]["onnx_int8"] for e in exports]
            folder = args.out / name / f"seed{args.seeds[0]}"
            files = {fmt: folder / exports[0][fmt] for fmt in ("onnx", "onnx_int8")}
            ratio = files["onnx_int8"].stat().st_size / files["onnx"].stat().st_size
            speedup = statistics.mean(f / i for f, i in zip(fp32, int8))
            side = onnx_latencies(files, args.batch, args.rounds)
            print(
                f"| {name} | {ratio:.3f} | {statistics.mean(fp32):.3f} | {statistics.mean(int8):.3f} | {speedup:.2f}x "
                f"| {side['onnx']:.3f} | {side['onnx_int8']:.3f} | {side['onnx'] / side['onnx_int8']:.2f}x "
                f"| {exports[0]['int8']['kernels']} | {min(e['int8']['top1_agreement'] for e in exports):.4f} |"
            )
    staged = {name: runs for name, runs in results.items() if "stages" in runs[0].get("compression", {})}
    if staged:
        print("\nBytes after each stage (Han's Table 1; mean over seeds; the last is the .dcz file's size):\n")
        print("| recipe | " + " | ".join(STAGES) + " | test acc % |")
        print("|---|" + "---|" * (len(STAGES) + 1))
        for name, runs in staged.items():
            cells = []
            for stage in STAGES:
                size = statistics.mean(r["compression"]["stages"][stage]["bytes"] for r in runs)
                ratio = statistics.mean(r["compression"]["stages"][stage]["ratio"] for r in runs)
                cells.append(f"{size:,.0f} ({ratio:.1f}x)")
            print(f"| {name} | {' | '.join(cells)} | {mean_std([r['metrics']['test/acc'] for r in runs])} |")
    shortened = {name: runs for name, runs in results.items() if "block_prune_flops" in runs[0].get("compression", {})}
    if shortened:
        print("\nBlock pruning: blocks removed, forward FLOPs per sample before and after (torch's FLOP counter):\n")
        print("| recipe | removed (seed: modules) | FLOPs before | FLOPs after | after / before |")
        print("|---|---|---|---|---|")
        for name, runs in shortened.items():
            flops = [r["compression"]["block_prune_flops"] for r in runs]
            removed = "; ".join(
                f"{seed}: {' '.join(r['compression']['block_prune_removed'])}" for seed, r in zip(args.seeds, runs)
            )
            before, after = statistics.mean(f["before"] for f in flops), statistics.mean(f["after"] for f in flops)
            print(f"| {name} | {removed} | {before:,.0f} | {after:,.0f} | {after / before:.3f} |")


if __name__ == "__main__":
    main()
