"""Compare the transfer recipes on the embedded digits: same seeds, epoch budget and data for each.

1. Student from scratch vs distilled student (recipe=distill: MLP [100] student, conv-net
   teacher trained once and shared by all seeds); the scratch student is the same recipe with
   task=classifier, so net, epochs and optimizer are identical.
2. On the shifted digits (recipe defaults: rotated, low-contrast, noisy, 100 labelled images), from
   one source model trained once: the source model as it is, plain fine-tuning, KLD adaptation,
   uniform and tail data mixing, each with its accuracy on the old (source) and new (target) domain.

Every run goes through `python -m recipes.train`, as a user would run it. Prints Markdown tables
(mean +- std over seeds) and writes every run's metrics to <out>/compare_transfer.json.

    python scripts/compare_transfer.py                # seeds 0 1 2, about 3 minutes on 2 CPU cores
    python scripts/compare_transfer.py --seeds 0 1 2 3 4 --out outputs/compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recipes.stages.results import strict_json

from launch import mean_std, train

STUDENTS = {
    "student from scratch": ["recipe=distill", "task=classifier", "~prerequisites", "~task.temperature", "~task.alpha"],
    "distilled student": ["recipe=distill"],  # + task.teacher_ckpt
}
TRANSFER = {
    "source model, not adapted": ["recipe=finetune", "trainer.max_epochs=0"],  # + task.init_ckpt
    "plain fine-tune": ["recipe=finetune"],  # + task.init_ckpt
    "KLD adaptation": ["recipe=adapt"],  # + task.source_ckpt
    "uniform mixing": ["recipe=data_mix", "data.mix.mode=uniform"],  # + task.init_ckpt
    "tail mixing": ["recipe=data_mix", "data.mix.mode=tail"],  # + task.init_ckpt
}


def slug(name: str) -> str:
    """A row name as a folder name Hydra accepts in hydra.run.dir."""
    return name.replace(",", "").replace(" ", "_")


def checkpoint(run_dir: Path) -> str:
    return str(run_dir / json.loads((run_dir / "results.json").read_text())["checkpoint"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/compare_transfer"))
    args = parser.parse_args()
    out, seeds = args.out, args.seeds
    runs: dict[str, list[dict]] = {}

    # The shared earlier models: a teacher (trained by the first distill run) and a source model.
    first = train(out / f"{slug('distilled student')}/seed{seeds[0]}", "recipe=distill", f"seed={seeds[0]}")
    teacher = checkpoint(out / f"{slug('distilled student')}/seed{seeds[0]}/teacher")
    train(out / "source", "recipe=adapt", "trainer.max_epochs=0", f"seed={seeds[0]}")  # trains source/ only
    source = checkpoint(out / "source/source")
    extra = {"distilled student": [f"task.teacher_ckpt={teacher}"], "KLD adaptation": [f"task.source_ckpt={source}"]}
    for name, overrides in {**STUDENTS, **TRANSFER}.items():
        start = [f"task.init_ckpt={source}"] if name in TRANSFER and name != "KLD adaptation" else []
        for seed in seeds:
            if name == "distilled student" and seed == seeds[0]:
                runs.setdefault(name, []).append(first["metrics"])
                continue
            results = train(out / slug(name) / f"seed{seed}", *overrides, *extra.get(name, []), *start, f"seed={seed}")
            runs.setdefault(name, []).append(results["metrics"])
            print(f"{name} seed {seed}: {results['metrics'].get('test/acc'):.4f}", file=sys.stderr)

    (out / "compare_transfer.json").write_text(strict_json(runs, indent=2) + "\n")
    print(f"\nTest accuracy in %, mean +- std over seeds {seeds} (digits, same budget per row)\n")
    print("| student (MLP [100]; teacher: convnet) | test acc |\n|---|---|")
    for name in STUDENTS:
        print(f"| {name} | {mean_std([m['test/acc'] for m in runs[name]])} |")
    print("\n| shifted digits, from one source model | source-domain acc | target-domain acc |\n|---|---|---|")
    for name in TRANSFER:
        print(
            f"| {name} | {mean_std([m['test/acc_source'] for m in runs[name]])} "
            f"| {mean_std([m['test/acc_target'] for m in runs[name]])} |"
        )


if __name__ == "__main__":
    main()
