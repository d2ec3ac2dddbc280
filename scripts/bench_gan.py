"""GAN benchmark: the MLP GAN (model=gan_mlp) and DCGAN (model=dcgan) on digits, unconditional and
conditional, over seeds, with the same budget (the recipe's defaults), in one table.

Each row is `python -m recipes.train recipe=gan model=M task.conditional=C seed=S`, as a user runs it,
all measured by one feature classifier (the first run trains it, the others get it as
task.feature_ckpt, so every row's seconds are the GAN's own). fd / fd_real is the distance of the
samples from the test images in units of the train-vs-test floor; fd_init is the same test with the
generator's weights re-initialized (the untrained generator), so fd / fd_init shows how far training got.

    python scripts/bench_gan.py                       # 4 rows x 3 seeds: about 15 minutes on 2 CPU cores
    python scripts/bench_gan.py --models gan_mlp --seeds 0 --out outputs/bench_gan
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from launch import train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the recipes package, run from a checkout

from recipes.assembly.restore import rebuild
from recipes.assembly.training import build_test_trainer


def untrained_fd(ckpt: Path, seed: int) -> float:
    """test/fd of the run's generator with fresh weights: the scale training started from."""
    cfg, datamodule, module, _ = rebuild(str(ckpt))
    torch.manual_seed(seed)
    for layer in module.net.generator.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return float(build_test_trainer(cfg).test(module, datamodule=datamodule, verbose=False)[0]["test/fd"])


def mean_std(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gan_mlp", "dcgan"])
    parser.add_argument("--conditional", nargs="+", default=["false", "true"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_gan"))
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. trainer.max_epochs=300")
    args = parser.parse_args()

    # A feature classifier given as an override (e.g. the one an earlier call trained, so that more
    # seeds are measured in the same features) is used by every run; otherwise the first run trains it.
    given_feature = [o.split("=", 1)[1] for o in args.overrides if o.startswith("task.feature_ckpt=")]
    feature: Path | None = Path(given_feature[-1]) if given_feature else None
    seconds_feature = 0.0
    rows = []
    for model in args.models:
        for conditional in args.conditional:
            runs = []
            for seed in args.seeds:
                run_dir = args.out / f"{model}-cond{conditional}" / f"seed{seed}"
                given = [f"task.feature_ckpt={feature}"] if feature and not given_feature else []
                start = time.perf_counter()
                result = train(
                    run_dir,
                    "recipe=gan",
                    f"model={model}",
                    f"task.conditional={conditional}",
                    f"seed={seed}",
                    "logger=csv",
                    *given,
                    *args.overrides,
                )
                seconds = time.perf_counter() - start
                if feature is None:  # the first run trained the feature classifier: measure every row with it
                    done = json.loads((run_dir / "feature" / "results.json").read_text())
                    feature = run_dir / "feature" / done["checkpoint"]
                    seconds_feature = seconds
                metrics = result["metrics"]
                runs.append(
                    {**metrics, "seconds": seconds, "fd_init": untrained_fd(run_dir / result["checkpoint"], seed)}
                )
            rows.append((model, conditional, runs))

    print(
        f"\nrecipe=gan on digits, seeds {args.seeds}, {' '.join(args.overrides) or 'default budget'}; "
        f"mean +- std. The first run's seconds include its feature classifier ({seconds_feature:.0f} s in all)\n"
    )
    print(
        "| model | conditional | test/fd | test/fd_real | fd / fd_real | fd / fd_init | coverage | cond_acc | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, conditional, runs in rows:
        cond_acc = mean_std([r["test/cond_acc"] for r in runs], 3) if conditional == "true" else "-"
        print(
            f"| {model} | {conditional} | {mean_std([r['test/fd'] for r in runs])} "
            f"| {mean_std([r['test/fd_real'] for r in runs])} "
            f"| {mean_std([r['test/fd'] / r['test/fd_real'] for r in runs], 1)} "
            f"| {mean_std([r['test/fd'] / r['fd_init'] for r in runs], 3)} "
            f"| {mean_std([r['test/class_coverage'] for r in runs], 3)} | {cond_acc} "
            f"| {mean_std([r['seconds'] for r in runs], 0)} |"
        )
    print("\nper seed: model conditional seed fd / fd_real, fd / fd_init, coverage, cond_acc, seconds")
    for model, conditional, runs in rows:
        for seed, r in zip(args.seeds, runs):
            print(
                f"{model} {conditional} {seed} {r['test/fd'] / r['test/fd_real']:.2f} {r['test/fd'] / r['fd_init']:.3f} "
                f"{r['test/class_coverage']:.3f} {r.get('test/cond_acc', float('nan')):.3f} {r['seconds']:.0f}"
            )


if __name__ == "__main__":
    main()
