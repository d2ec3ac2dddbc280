"""The same MNIST-format job run by this project and by ashleve/lightning-hydra-template, side by side.

The job (issue 15's): a 784-64-64-64-10 MLP with BatchNorm, AdamW at 1e-3, batch 64, 20 epochs, 1,260
training and 140 validation images, tested on 1,000, on the CPU, seed 0. Both programs read the same
generated MNIST IDX files through their own data path, run with their own default callbacks, and are
timed as a user would time them: the whole command's wall time, and the `trainer.fit` call's (a
callback from this file, added to both through a Hydra override, prints it). Runs alternate
(recipe, template, recipe, ...) after one warm-up each; medians are compared.

    git clone https://github.com/ashleve/lightning-hydra-template /tmp/template
    pip install rootutils hydra-colorlog rich           # the template's extra dependencies
    python scripts/compare_template.py --template /tmp/template [--template-python PYTHON]

Prints `ratio whole command: X` and `ratio fit: Y` (this project's time / the template's).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from typing_extensions import override

REPO = Path(__file__).resolve().parent.parent
FIT_LINE = re.compile(r"^fit_seconds_measured: ([0-9.]+)$", re.M)
TRAIN, VAL, TEST = 1260, 140, 1000


class FitTimer(pl.Callback):
    """Prints how long `trainer.fit` ran, from the fit's start hook to its end hook."""

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(f"fit_seconds_measured: {time.perf_counter() - self.start:.4f}", flush=True)


TIMER = "+callbacks.fit_timer._target_=compare_template.FitTimer"


def recipe_command(data_root: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recipes.train",
        "data=mnist",
        f"data.root={data_root}",
        "data.batch_size=64",
        f"data.val_fraction={VAL / (TRAIN + VAL)}",
        "model=mlp",
        "model.hidden=[64,64,64]",
        "model.batch_norm=true",
        "task.optimizer._target_=torch.optim.AdamW",
        "task.optimizer.lr=0.001",
        f"trainer.max_epochs={epochs}",
        "seed=0",
        f"hydra.run.dir={run_dir}",
        TIMER,
    ]


def template_command(python: str, data_root: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        python,
        "src/train.py",
        f"data.data_dir={data_root}",
        "data.batch_size=64",
        f"data.train_val_test_split=[{TRAIN},{VAL},{TEST}]",
        "model.net.lin2_size=64",  # 784-64-64-64-10 (the template's default middle layer is 128)
        "model.optimizer._target_=torch.optim.AdamW",
        "model.optimizer.lr=0.001",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        "seed=0",
        f"hydra.run.dir={run_dir}",
        TIMER,
    ]


def timed(command: list[str], cwd: Path, env_extra: dict[str, str] | None = None) -> tuple[float, float]:
    """(whole command seconds, fit seconds) of one run; fails loudly if the run fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO)]), **(env_extra or {})}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    whole = time.perf_counter() - start
    found = FIT_LINE.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return whole, float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, required=True, help="a clone of ashleve/lightning-hydra-template")
    parser.add_argument("--template-python", default=sys.executable, help="interpreter with the template's deps")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each program")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    if not (args.template / "src" / "train.py").is_file():
        sys.exit(f"error: --template={args.template} has no src/train.py; pass a clone of lightning-hydra-template")
    sys.path.insert(0, str(REPO))
    from recipes.data.synthetic_files import write_mnist_idx

    with tempfile.TemporaryDirectory() as tmp:
        data_root = write_mnist_idx(Path(tmp) / "data", n_train=TRAIN + VAL, n_test=TEST)
        runs = iter(range(10**6))
        programs = {
            "recipe": lambda: timed(recipe_command(data_root, Path(tmp) / f"r{next(runs)}", args.epochs), REPO),
            "template": lambda: timed(
                template_command(args.template_python, data_root, Path(tmp) / f"t{next(runs)}", args.epochs),
                args.template,
                # The template pickles its net into the checkpoint's hyper-parameters, which torch >= 2.6
                # refuses to load by default (weights_only): its own test step fails without this.
                {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
            ),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in programs}
        for i in range(args.repeats + 1):  # the first round warms the file cache and is dropped
            for name, run in programs.items():
                result = run()
                if i:
                    times[name].append(result)
    med = {name: [statistics.median(t[k] for t in found) for k in (0, 1)] for name, found in times.items()}
    print(f"MNIST-format job, {TRAIN} train images, {args.epochs} epochs, medians of {args.repeats} alternated runs")
    for name, (whole, fit) in med.items():
        print(f"  {name}: whole command {whole:.2f}s, fit {fit:.2f}s")
    print(f"ratio whole command: {med['recipe'][0] / med['template'][0]:.3f}")
    print(f"ratio fit: {med['recipe'][1] / med['template'][1]:.3f}")


if __name__ == "__main__":
    main()
