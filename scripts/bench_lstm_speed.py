"""LSTM training speed on CPU: is a hand-written LSTMP faster than nn.LSTM(proj_size)?

On CPU, nn.LSTM with `proj_size` leaves oneDNN for a slower native path ("LSTM with projections is not
supported with oneDNN"). This times the recipe's training step (Embedding -> recurrent layer ->
Linear head, cross-entropy, backward, Adam) of each candidate at the recipe's shapes (batch 32,
128 steps, embedding 64, vocabulary 100), alternated (a, b, c, a, b, c, ...) after a dropped warm-up,
and prints the medians as steps/s and as ratios to nn.LSTM 256:

    lstm256       nn.LSTM(64, 256)                          the recipe's LSTM (oneDNN)
    lstmp         nn.LSTM(64, 512, proj_size=128)           LSTMP, torch's native fallback
    stepwise      ProjectedLSTM(64, 512, proj_size=128)     modules/nets/projected_lstm.py: W x for all steps
                                                           in one matmul, then a Python loop over time
    compiled      torch.compile(stepwise)                   needs a C compiler; reported as failed if not

    python scripts/bench_lstm_speed.py --threads 1           # the figure of one core
    python scripts/bench_lstm_speed.py --threads 2 --steps 20 --repeats 7 --nets lstm256 lstmp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's modules and recipes, not an installed copy

from modules.nets.projected_lstm import ProjectedLSTM

from launch import alternated

VOCAB, EMBED = 100, 64


class Outputs(nn.Module):
    """A recurrent layer's outputs only (what SequenceLSTM's block does)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def net_of(name: str, hidden: int, proj: int) -> nn.Module:
    """The language model of row `name`: Embedding -> recurrent layer -> Linear head."""
    if name == "lstm256":
        rnn, width = nn.LSTM(EMBED, 256, batch_first=True), 256
    elif name == "lstmp":
        rnn, width = nn.LSTM(EMBED, hidden, batch_first=True, proj_size=proj), proj
    else:
        rnn, width = ProjectedLSTM(EMBED, hidden, proj_size=proj), proj
    net = nn.Sequential(nn.Embedding(VOCAB, EMBED), Outputs(rnn), nn.Linear(width, VOCAB))
    if name == "compiled":
        net = torch.compile(net)
    return net


def trainer(net: nn.Module, batch: int, length: int, steps: int) -> Callable[[], float]:
    """A measure: `steps` training steps on fixed random symbols; their steps/s."""
    x, y = torch.randint(VOCAB, (batch, length)), torch.randint(VOCAB, (batch, length))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def measure() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(net(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps / (time.perf_counter() - start)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed measure")
    parser.add_argument("--repeats", type=int, default=5, help="alternated measures per net (median reported)")
    parser.add_argument("--nets", nargs="+", default=["lstm256", "lstmp", "stepwise", "compiled"])
    parser.add_argument("--hidden", type=int, default=512, help="LSTMP cell width")
    parser.add_argument("--proj", type=int, default=128, help="LSTMP projection width")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="steps per sequence")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    measures, failed, first = {}, {}, {}
    for name in args.nets:
        measure = trainer(net_of(name, args.hidden, args.proj), args.batch, args.length, args.steps)
        start = time.perf_counter()
        try:
            measure()  # compiles where it must, outside the timed rounds
        except Exception as error:  # torch.compile's failures (no compiler, ...) are many kinds
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            continue
        measures[name] = measure
        first[name] = time.perf_counter() - start
    medians = {name: statistics.median(v) for name, v in alternated(measures, args.repeats).items()}
    base = medians.get("lstm256")
    print(
        f"\nthreads {args.threads}, batch {args.batch} x {args.length} steps, embed {EMBED}, vocab {VOCAB}, "
        f"LSTMP {args.hidden}/{args.proj}; medians of {args.repeats} alternated measures of {args.steps} steps\n"
    )
    print("| net | steps/s | vs lstm256 | vs lstmp | first measure s (compile included) |")
    print("|---|---|---|---|---|")
    for name, rate in medians.items():
        ratio = f"{rate / base:.2f}" if base else "-"
        vs_lstmp = f"{rate / medians['lstmp']:.2f}" if "lstmp" in medians else "-"
        print(f"| {name} | {rate:.2f} | {ratio} | {vs_lstmp} | {first[name]:.1f} |")
    for name, reason in failed.items():
        print(f"| {name} | failed: {reason} | - | - | - |")


if __name__ == "__main__":
    main()
