"""Parallel strategies side by side: each runs `python -m recipes.train` in a subprocess on the same
work (same total batch per optimizer step, epochs, seed and data) and the table compares what each
results.json measured: samples per second, bytes sent per optimizer step (per rank), final test
accuracy, and its gap to one process.

    python scripts/bench_parallel.py                                   # every conf/strategy/*.yaml, 2 CPU ranks
    python scripts/bench_parallel.py --strategies single ddp model_avg --epochs 20 --set model_avg:strategy.period=8
    python scripts/bench_parallel.py --accelerator gpu --devices 4 --set data=mnist

`single` is one process with the whole batch; every other strategy runs on `--devices` processes
(`trainer=ddp_sim strategy=NAME`), each with batch/devices samples, except the strategies named in
`--full-batch` (pipeline parallelism splits the net, not the batch: every stage sees the whole batch).
A strategy without a conf/strategy/NAME.yaml is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary=null",
    "logger=csv",
]


def available() -> list[str]:
    """Strategy configs in this checkout, `single` first."""
    names = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))
    return sorted(names, key=lambda n: n != "single")


def overrides_for(name: str, args: argparse.Namespace) -> list[str]:
    """The command line of one run: the same trainer preset for all, only strategy and devices differ."""
    devices = 1 if name == "single" else args.devices
    per_rank = args.batch_size if name == "single" or name in args.full_batch else args.batch_size // args.devices
    own = [s.split(":", 1)[1] for s in args.set if s.startswith(f"{name}:")]
    common = [s for s in args.set if ":" not in s.split("=", 1)[0]]
    return [
        "trainer=ddp_sim",
        f"strategy={name}",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.devices={devices}",
        f"trainer.max_epochs={args.epochs}",
        f"data.batch_size={per_rank}",
        f"seed={args.seed}",
        *QUIET,
        *common,
        *own,
    ]


def run(name: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any] | None:
    # overwrite=true: a second call with the same --out measures again in the same run dirs
    cmd = [
        sys.executable,
        "-m",
        "recipes.train",
        f"hydra.run.dir={run_dir}",
        "overwrite=true",
        *overrides_for(name, args),
    ]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads((run_dir / "results.json").read_text())


def table(rows: dict[str, list[dict[str, Any]]], batch_size: int, repeats: int) -> str:
    """One line per strategy: medians over the repeats of samples/s and of test accuracy."""

    def acc(runs: list[dict[str, Any]]) -> float:
        return statistics.median(r["metrics"]["test/acc"] for r in runs)

    base = acc(rows["single"]) if "single" in rows else None
    lines = [
        "| strategy | processes | steps | samples/s | comm bytes/step | test acc | gap vs single (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        par = runs[0]["parallel"]
        speed = statistics.median(r["parallel"]["samples_per_second"] for r in runs)
        comm = par.get("comm_bytes_per_step")
        gap = f"{(acc(runs) - base) * 100:+.2f}" if base is not None else "n/a"
        lines.append(
            f"| {name} | {par['world_size']} | {par['steps']} | {speed:.1f} | "
            f"{'n/a' if comm is None else f'{comm:,.0f}'} | {acc(runs):.4f} | {gap} |"
        )
    return "\n".join(lines) + f"\n\n(total batch per optimizer step: {batch_size}; medians of {repeats} run(s))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=available(), help="conf/strategy names (default: all)")
    parser.add_argument("--accelerator", default="cpu", help="trainer.accelerator: cpu, gpu")
    parser.add_argument("--devices", type=int, default=2, help="processes for every strategy but single")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per optimizer step, all ranks together")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per strategy, interleaved; medians reported")
    parser.add_argument(
        "--full-batch", nargs="*", default=["pipeline"], help="strategies whose every rank gets the whole batch"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="extra overrides: KEY=VALUE for all, NAME:KEY=VALUE for one strategy"
    )
    parser.add_argument("--out", type=Path, default=None, help="parent of the run dirs (default: a temp dir)")
    args = parser.parse_args()
    if args.batch_size % args.devices:
        parser.error(f"--batch-size {args.batch_size} must be divisible by --devices {args.devices}")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_parallel_"))
    names = []
    for name in dict.fromkeys(args.strategies):
        if (REPO / "conf" / "strategy" / f"{name}.yaml").is_file():
            names.append(name)
        else:
            print(f"{name}: skipped (no conf/strategy/{name}.yaml in this checkout)", file=sys.stderr)
    rows: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for name in names:
            if (res := run(name, args, out / f"{name}_{repeat}")) is not None:
                rows.setdefault(name, []).append(res)
    print(table(rows, args.batch_size, args.repeats))
    print(f"\nrun dirs: {out}")


if __name__ == "__main__":
    main()
