"""Sequence-model benchmark: character LMs on data=pytext at one budget, in one table (issue 24).

Each row is `python -m recipes.train recipe=lm model=... trainer.max_epochs=E export=dynamic seed=S
threads=1` (OMP_NUM_THREADS=1), as a user runs it; every row reads the same windows (data.seq_len,
data.batch_size) for the same epochs, so every row takes the same optimizer steps:

    lstm         LSTM H                     model=lstm model.hidden=H
    lstmp        LSTMP H/(H/4)              model.proj_size=H/4: fewer recurrent weights
    shared       gate-shared LSTM H         model.share_gates=true: one matrix for all four gates
    transformer  causal transformer         model=transformer, 2 layers, the width whose parameter
                                            count is nearest the LSTM row's (printed)
    lstmp2       LSTMP 2H/(H/2)             (not in the default rows)

From each run's results.json: steps/s (fit steps / fit_seconds, validation included), test bpc,
ONNX parity (export.parity_max_abs_diff), int8 file bytes (export.bytes.onnx_dynamic). The int8
bpc is measured here: the run's onnx and onnx_dynamic files on its test split (the data module
rebuilt from its checkpoint) in onnxruntime, one thread, over the whole test split (with --smoke the
runs' test bpc covers one batch only). Then the ratios the issue's targets use, and OUT/table.json and
OUT/learning_curves.png (val/bpc per epoch of each row, mean over seeds).

    python scripts/bench_sequence.py --parallel 2           # 3 seeds, recipe=lm's budget (25 epochs, batch 32)
    python scripts/bench_sequence.py --smoke                # tiny: a check that the script runs
    python scripts/bench_sequence.py --rows lstm lstmp --seeds 0 --epochs 2 --out outputs/bench_seq
    python scripts/bench_sequence.py --parallel 2 --reuse   # after an interruption: train the missing rows only
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's modules and recipes, not an installed copy

from modules.nets.lstm import SequenceLSTM
from modules.nets.transformer import CausalTransformer
from recipes.assembly.restore import rebuild
from recipes.data.text import PyTextDataModule

from launch import train

ROWS = ["lstm", "lstmp", "shared", "transformer"]
SMOKE = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def size(net: nn.Module) -> tuple[int, int]:
    """Parameters of the whole net and of its sequence layers (the LSTM block, or the transformer's blocks)."""
    layers = [child for name, child in net.named_children() if name == "lstm" or name.startswith("block")]
    return sum(p.numel() for p in net.parameters()), sum(p.numel() for m in layers for p in m.parameters())


def row_models(hidden: int, embed: int, seq_len: int, vocab: int) -> dict[str, tuple[list[str], nn.Module]]:
    """Each row's model overrides and its net (built here only to count parameters)."""
    shape = (seq_len,)

    def lstm(**knobs: int | bool) -> tuple[list[str], nn.Module]:
        knobs = {"hidden": hidden, "embed": embed, **knobs}
        overrides = ["model=lstm", *(f"model.{k}={str(v).lower()}" for k, v in knobs.items())]
        return overrides, SequenceLSTM(shape, vocab, **knobs)

    target = size(SequenceLSTM(shape, vocab, embed, hidden))[0]
    widths = range(8, 8 * hidden, 8)  # multiples of the 4 heads (2 per head at least)
    width = min(widths, key=lambda w: abs(size(CausalTransformer(shape, vocab, w, 2, 4))[0] - target))
    return {
        "lstm": lstm(),
        "lstmp": lstm(proj_size=hidden // 4),
        "shared": lstm(share_gates=True),
        "transformer": (
            ["model=transformer", f"model.width={width}", "model.layers=2", "model.heads=4"],
            CausalTransformer(shape, vocab, width, 2, 4),
        ),
        "lstmp2": lstm(hidden=2 * hidden, proj_size=hidden // 2),
    }


def onnx_bpc(files: list[Path], loader: torch.utils.data.DataLoader) -> list[float]:
    """Bits per character of each ONNX file over the test windows: next-symbol cross-entropy, all steps."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for f in files]
    nats, count = [0.0] * len(files), 0
    for x, y in loader:
        for k, session in enumerate(sessions):
            (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.int64)})
            logits = torch.from_numpy(logits).flatten(0, 1)
            nats[k] += nn.functional.cross_entropy(logits, y.flatten(), reduction="sum").item()
        count += y.numel()
    return [n / count / math.log(2) for n in nats]


def int8_bpc(run_dir: Path, result: dict) -> tuple[float, float]:
    """(fp32 ONNX bpc, int8 ONNX bpc) of a run on its test split."""
    _, datamodule, _, _ = rebuild(str(run_dir / result["checkpoint"]))
    datamodule.setup("test")
    files = [run_dir / result["export"][fmt] for fmt in ("onnx", "onnx_dynamic")]
    fp32, int8 = onnx_bpc(files, datamodule.test_dataloader())
    return fp32, int8


def spread(values: list[float], digits: int = 3) -> str:
    """`mean +- std` over seeds."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {std:.{digits}f}"


def learning_curves(out: Path, rows: list[str], seeds: list[int]) -> Path:
    """val/bpc per epoch of each row (mean over seeds, from each run's csv/metrics.csv) drawn as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name in rows:
        curves = []
        for seed in seeds:
            with open(out / name / f"seed{seed}" / "csv" / "metrics.csv", newline="") as f:
                curves.append([float(r["val/bpc"]) for r in csv.DictReader(f) if r.get("val/bpc")])
        epochs = min(len(c) for c in curves)
        axes.plot(
            range(1, epochs + 1),
            [statistics.mean(c[i] for c in curves) for i in range(epochs)],
            marker="o",
            markersize=3,
            label=name,
        )
    axes.set(xlabel="epoch", ylabel="val/bpc (mean over seeds)", title="data=pytext: validation bits per character")
    axes.legend()
    axes.grid(alpha=0.3)
    path = out / "learning_curves.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=[*ROWS, "lstmp2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=25, help="the epoch budget of every row (recipe=lm's)")
    parser.add_argument("--hidden", type=int, default=256, help="H: the LSTM's hidden width")
    parser.add_argument("--embed", type=int, default=64, help="symbol embedding width of the LSTM rows")
    parser.add_argument("--seq-len", type=int, default=128, help="data.seq_len of every row")
    parser.add_argument("--batch-size", type=int, default=32, help="data.batch_size of every row (recipe=lm's)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (each on one thread)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_sequence"))
    parser.add_argument("--overrides", nargs="*", default=[], help="overrides of every row")
    parser.add_argument("--smoke", action="store_true", help="tiny: seq_len 32, H 32, 1 epoch, 3 batches")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs of --out that finished (results.json); train the others"
    )
    args = parser.parse_args()
    extra = list(args.overrides)
    if args.smoke:
        args.seq_len, args.hidden, args.embed, args.epochs, args.batch_size = 32, 32, 16, 1, 16
        extra += SMOKE
    vocab = PyTextDataModule(seq_len=args.seq_len).num_classes
    models = row_models(args.hidden, args.embed, args.seq_len, vocab)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str, seed: int) -> dict:
        run_dir = args.out / name / f"seed{seed}"
        if args.reuse and (run_dir / "results.json").is_file():
            return json.loads((run_dir / "results.json").read_text())
        return train(
            run_dir,
            "recipe=lm",
            *models[name][0],
            f"trainer.max_epochs={args.epochs}",
            f"data.seq_len={args.seq_len}",
            f"data.batch_size={args.batch_size}",
            "export=dynamic",
            "export.int8_agreement=0",  # this script measures the int8 file's bpc itself: report it, do not stop
            "export.int8_atol=1e9",
            "logger=csv",
            "threads=1",
            f"seed={seed}",
            *extra,
            env=env,
        )

    jobs = [(name, seed) for name in args.rows for seed in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        done = dict(zip(jobs, pool.map(lambda job: run(*job), jobs), strict=True))
    torch.set_num_threads(1)
    measured = {job: int8_bpc(args.out / job[0] / f"seed{job[1]}", done[job]) for job in jobs}

    table: dict[str, dict[str, list[float]]] = {}
    for (name, _), r in done.items():
        e, fp32, int8 = r["export"], *measured[(name, r["seed"])]
        cells = {
            "steps_s": r["parallel"]["steps"] / r["fit_seconds"],
            "steps": r["parallel"]["steps"],
            "bpc": r["metrics"]["test/bpc"],
            "parity": e["parity_max_abs_diff"],
            "int8_bytes": e["bytes"]["onnx_dynamic"],
            "bytes_ratio": e["bytes"]["onnx_dynamic"] / e["bytes"]["onnx"],
            "onnx_bpc": fp32,
            "int8_bpc": int8,
            "int8_delta": int8 - fp32,
        }
        for key, value in cells.items():
            table.setdefault(name, {}).setdefault(key, []).append(value)
    print(
        f"\ndata=pytext (vocabulary {vocab}), seq_len {args.seq_len}, batch {args.batch_size}, {args.epochs} epochs, "
        f"seeds {args.seeds}, one thread per run, {args.parallel} at once; H={args.hidden}\n"
    )
    print(
        "| net | overrides | params | sequence-layer params | steps | steps/s | test bpc | ONNX parity "
        "| int8 bytes | int8/onnx bytes | ONNX fp32 bpc | int8 bpc | int8 - fp32 bpc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, c in table.items():
        total, layers = size(models[name][1])
        print(
            f"| {name} | {' '.join(models[name][0])} | {total:,} | {layers:,} | {max(c['steps'])} "
            f"| {spread(c['steps_s'], 2)} | {spread(c['bpc'])} | {max(c['parity']):.1e} "
            f"| {statistics.mean(c['int8_bytes']):,.0f} | {statistics.mean(c['bytes_ratio']):.3f} "
            f"| {spread(c['onnx_bpc'])} | {spread(c['int8_bpc'])} | {spread(c['int8_delta'], 4)} |"
        )
    lstm = table.get("lstm")
    print("\nThe issue's targets (means over seeds):\n")
    if lstm:
        base_total, base_layers = size(models["lstm"][1])
        for name in ("lstmp", "lstmp2"):
            if name in table:
                print(
                    f"- {name} params / lstm params: {size(models[name][1])[0] / base_total:.3f}; "
                    f"bpc - lstm bpc: {statistics.mean(table[name]['bpc']) - statistics.mean(lstm['bpc']):+.4f}"
                )
        if "shared" in table:
            print(f"- shared sequence-layer params / lstm's: {size(models['shared'][1])[1] / base_layers:.3f}")
    for name, c in table.items():
        print(
            f"- {name} int8: bytes / onnx bytes {statistics.mean(c['bytes_ratio']):.3f}, "
            f"int8 bpc - fp32 bpc {statistics.mean(c['int8_delta']):+.4f}"
        )
    steps = {max(c["steps"]) for c in table.values()}
    if len(steps) > 1:
        print(f"\nwarning: the rows took different optimizer steps {sorted(steps)}")
    (args.out / "table.json").write_text(json.dumps(table, indent=1))
    print(f"learning curves: {learning_curves(args.out, list(table), args.seeds)}")


if __name__ == "__main__":
    main()
