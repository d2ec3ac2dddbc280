"""NAS benchmark: DARTS against random search at the same search cost, and the hand-designed convnet at
no more parameters (issue 26), on digits, each run `python -m recipes.train` as a user runs it (one
thread per run, OMP_NUM_THREADS=1):

    darts    the search (task=darts model=darts_search, --search-epochs), then its genotype retrained
             from scratch (recipe=darts_retrain, --retrain-epochs)
    random   genotypes drawn uniformly from the same space (modules/nas/genotype.py: random_genotype),
             each trained for --candidate-epochs with recipe=darts_retrain, until their fit time adds
             up to that seed's DARTS search time (at least two); the best by val/acc is retrained
             for --retrain-epochs (Li and Talwalkar 2019's baseline)
    convnet  recipe=darts_retrain model=convnet (the same optimizer, dropout and budget as the
             derived nets) with channels [c, 2c, 4c], c the largest whose parameter count does not
             exceed the DARTS net's (mean over seeds), --retrain-epochs

Each row: test accuracy (mean +- std over the seeds), parameters, search and retrain fit seconds.
Seeds run side by side with --parallel.

    python scripts/bench_nas.py --parallel 2          # seeds 0 1 2
    python scripts/bench_nas.py --smoke               # tiny: a check that the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's modules and recipes, not an installed copy

from modules.nas.genotype import random_genotype
from modules.nas.networks import DartsNet
from modules.nas.operations import DEFAULT_OPERATIONS
from modules.nets.convnet import ConvNet

from launch import mean_std, train

SMOKE = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def darts_params(genotype: str) -> int:
    """The parameters of the net `recipe=darts_retrain model.genotype=GENOTYPE` trains on digits."""
    model = OmegaConf.load(REPO / "conf" / "model" / "darts.yaml")
    sizes = {key: model[key] for key in ("channels", "cells", "stem_multiplier")}
    return params(DartsNet((1, 8, 8), 10, genotype, **sizes))


def run(folder: Path, *overrides: str, args: argparse.Namespace, seed: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = SMOKE if args.smoke else []
    return train(folder, *overrides, "threads=1", "logger=csv", "export=none", f"seed={seed}", *extra, env=env)


def darts_row(seed: int, args: argparse.Namespace) -> dict:
    """The search, then its genotype retrained."""
    folder = args.out / "darts" / f"seed{seed}"
    search = run(
        folder / "search",
        "task=darts",
        "model=darts_search",
        f"model.nodes={args.nodes}",
        f"trainer.max_epochs={args.search_epochs}",
        *args.search_overrides,
        args=args,
        seed=seed,
    )
    genotype = search["darts"]["genotype"]
    retrain = run(
        folder / "retrain",
        "recipe=darts_retrain",
        f"model.genotype={genotype}",
        f"trainer.max_epochs={args.retrain_epochs}",
        args=args,
        seed=seed,
    )
    return {"search": search["fit_seconds"], "retrain": retrain, "genotype": genotype}


def random_row(seed: int, budget: float, args: argparse.Namespace) -> dict:
    """Random genotypes trained briefly until their fit time reaches `budget`; the best one retrained."""
    folder = args.out / "random" / f"seed{seed}"
    generator = torch.Generator().manual_seed(seed)
    spent, tried = 0.0, []
    while spent < budget or len(tried) < 2:
        genotype = str(random_genotype(DEFAULT_OPERATIONS, args.nodes, generator))
        result = run(
            folder / f"candidate{len(tried)}",
            "recipe=darts_retrain",
            f"model.genotype={genotype}",
            f"trainer.max_epochs={args.candidate_epochs}",
            args=args,
            seed=seed,
        )
        spent += result["fit_seconds"]
        tried.append((result["monitor"]["best"], genotype))
    best = max(tried)[1]
    retrain = run(
        folder / "retrain",
        "recipe=darts_retrain",
        f"model.genotype={best}",
        f"trainer.max_epochs={args.retrain_epochs}",
        args=args,
        seed=seed,
    )
    return {"search": spent, "retrain": retrain, "genotype": best, "candidates": len(tried)}


def convnet_channels(limit: int) -> list[int]:
    """The widest [c, 2c, 4c] convnet on digits with at most `limit` parameters."""
    c = 1
    while params(ConvNet((1, 8, 8), 10, channels=[c + 1, 2 * (c + 1), 4 * (c + 1)])) <= limit:
        c += 1
    return [c, 2 * c, 4 * c]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=20)
    parser.add_argument("--retrain-epochs", type=int, default=40)
    parser.add_argument("--candidate-epochs", type=int, default=5, help="each random candidate's short budget")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--search-overrides", nargs="*", default=[], help="e.g. task.order=2")
    parser.add_argument("--parallel", type=int, default=1, help="seeds at once (each run on one thread)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_nas"))
    parser.add_argument("--smoke", action="store_true", help="a few batches per run: a check that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.search_epochs, args.retrain_epochs, args.candidate_epochs, args.nodes = 1, 1, 1, 2

    def seed_rows(seed: int) -> dict:
        darts = darts_row(seed, args)
        return {"darts": darts, "random": random_row(seed, darts["search"], args)}

    with ThreadPoolExecutor(args.parallel) as pool:
        rows = dict(zip(args.seeds, pool.map(seed_rows, args.seeds), strict=True))
    darts_counts = [darts_params(rows[s]["darts"]["genotype"]) for s in args.seeds]
    channels = convnet_channels(int(statistics.mean(darts_counts)))
    with ThreadPoolExecutor(args.parallel) as pool:
        convnets = list(
            pool.map(
                lambda seed: run(
                    args.out / "convnet" / f"seed{seed}",
                    "recipe=darts_retrain",  # the same optimizer, dropout and budget as the derived nets
                    "model=convnet",
                    f"model.channels=[{','.join(map(str, channels))}]",
                    f"trainer.max_epochs={args.retrain_epochs}",
                    args=args,
                    seed=seed,
                ),
                args.seeds,
            )
        )
    table = {
        "darts": (darts_counts, [rows[s]["darts"] for s in args.seeds]),
        "random": (
            [darts_params(rows[s]["random"]["genotype"]) for s in args.seeds],
            [rows[s]["random"] for s in args.seeds],
        ),
        "convnet": (
            [params(ConvNet((1, 8, 8), 10, channels=channels))] * len(args.seeds),
            [{"search": 0.0, "retrain": r} for r in convnets],
        ),
    }
    print(
        f"\nDigits, seeds {args.seeds}: search {args.search_epochs} epochs (random: candidates of "
        f"{args.candidate_epochs} epochs for the same time), retrain {args.retrain_epochs} epochs, one thread per run\n"
    )
    print("| row | params | search s | retrain s | test acc % |")
    print("|---|---|---|---|---|")
    record = {}
    for name, (counts, results) in table.items():
        accs = [r["retrain"]["metrics"]["test/acc"] for r in results]
        search = statistics.mean(r["search"] for r in results)
        retrain = statistics.mean(r["retrain"]["fit_seconds"] for r in results)
        print(f"| {name} | {statistics.mean(counts):,.0f} | {search:.0f} | {retrain:.0f} | {mean_std(accs)} |")
        record[name] = {"params": counts, "test_acc": accs, "search_s": search, "retrain_s": retrain}
    record["genotypes"] = {name: [r.get("genotype") for r in table[name][1]] for name in ("darts", "random")}
    record["random_candidates"] = [rows[s]["random"]["candidates"] for s in args.seeds]
    record["convnet_channels"] = channels
    print(f"\nrandom candidates per seed: {record['random_candidates']}; convnet channels {channels}")
    (args.out / "table.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
