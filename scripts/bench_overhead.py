"""Framework overhead of the recipe's training loop vs a hand-written PyTorch loop doing the same work.

The ratio printed per workload compares the training loops (the recipe's from Lightning's
on_train_start to on_train_end, the plain one from its first to its last step); the one-off cost of
building and tearing down the Trainer is printed beside it. Both loops train the same net from the same initial weights on the same DataLoader (same batches,
same order), with the same optimizer and per-epoch cosine schedule, for the same epochs, and both
make the training loss visible every `log_every_n_steps` steps (the recipe through its CSV logger,
the plain loop by appending to a CSV file). Validation, checkpointing and the progress bar are off
in the recipe run, since the plain loop does none of them. Runs alternate (recipe, plain, recipe,
...) after one warm-up each, and the medians are compared. A third loop, a bare LightningModule (the
same net, loss, optimizer and schedule, nothing logged) under the same Trainer, runs alongside: its
ratio is Lightning's own floor for the workload, and `recipe over floor` is what the recipe's module
adds on top of it. Both loops run as `recipes.train` does (`recipes.runtime.libraries`: no per-step NVML
probe on a machine without a GPU), as a plain PyTorch program, which never imports Lightning, does.

Two more rows, also measured side by side in the same run:

- data path: samples/s of the recipe's MNIST-format loader (`data=mnist`: decoded once, served as
  batches) against a plain torchvision `MNIST` + `ToTensor` + `Normalize` DataLoader on the same
  files (60,000 generated 28x28 images written as real IDX files), one epoch each, same batch size.
- start-up: wall time of `python -m recipes.train debug=fast_dev_run` against a bare
  `python -c "import torch, lightning"` (the floor every Lightning program pays).

One more, only when asked for, since it keeps every core busy for a while: `--rows load` runs
scripts/bench_load.py (threads on a quiet and on a busy machine) with `--side-repeats` repeats.

    python scripts/bench_overhead.py                 # every row but load: `ratio convnet: X`, `ratio mlp: Y`, ...
    python scripts/bench_overhead.py --repeats 9 --workloads mlp --rows loop
    python scripts/bench_overhead.py --rows load     # the same as python scripts/bench_load.py --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import open_dict
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from typing_extensions import override

from bench_load import CONVNET
from bench_load import main as load_main
from launch import alternated

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's recipes, not an installed copy

from recipes.assembly.tasks import build_datamodule, build_module
from recipes.data.synthetic_files import write_mnist_idx
from recipes.runtime.libraries import drop_nvml_check_without_gpus, quiet_libraries
from recipes.runtime.resolvers import register_resolvers

# name -> (overrides, epochs)
WORKLOADS = {
    "convnet": (CONVNET, 10),
    "mlp": (["model=mlp", "model.hidden=[300,100]", "data.batch_size=64"], 60),
}


def compose_config(overrides: list[str], epochs: int, run_dir: Path):
    register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*overrides, f"trainer.max_epochs={epochs}", f"paths.run_dir={run_dir}"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class LoopTimer(pl.Callback):
    """Times the training loop itself: from the first epoch's start to the last epoch's end."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


class BareLightning(pl.LightningModule):
    """Lightning's floor: the recipe's net, loss, optimizer and schedule, with no logging, metrics or
    bookkeeping of its own."""

    def __init__(self, recipe_module: pl.LightningModule) -> None:
        super().__init__()
        self.net = recipe_module.net
        self.optimizer_factory = recipe_module.optimizer_factory
        self.scheduler_factory = recipe_module.scheduler_factory
        self.loss_fn = torch.nn.CrossEntropyLoss()

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.loss_fn(self.net(batch[0]), batch[1])

    @override
    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.net.parameters())
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}


def floor_run(cfg, datamodule, module, run_dir: Path) -> tuple[float, float]:
    """The bare LightningModule under the same Trainer as recipe_run (its val loop is off there too)."""
    warnings.filterwarnings("ignore", message=".*no `validation_step`")
    return recipe_run(cfg, datamodule, BareLightning(module), run_dir)


def recipe_run(cfg, datamodule, module, run_dir: Path, callbacks: Sequence[pl.Callback] = ()) -> tuple[float, float]:
    """The recipe's LightningModule under a Trainer with the recipe's trainer settings (scripts/bench_gpu.py
    runs it on a GPU, with its own `callbacks` beside the loop timer).

    Returns (seconds of the training loop, seconds of the whole `trainer.fit` call with its setup)."""
    timer = LoopTimer()
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_epochs=cfg.trainer.max_epochs,
        precision=cfg.trainer.precision,
        benchmark=cfg.trainer.benchmark,
        deterministic=cfg.trainer.deterministic,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=CSVLogger(run_dir, name="recipe"),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *callbacks],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds, time.perf_counter() - start


def plain_run(cfg, datamodule, module, run_dir: Path) -> float:
    """The same work in plain PyTorch: the net, the optimizer and schedule, the loader, the loss log.

    Returns (seconds of the loop, seconds including building the optimizer and loader)."""
    setup_start = time.perf_counter()
    net, device = module.net, torch.device("cpu")
    optimizer = module.optimizer_factory(net.parameters())
    scheduler = module.scheduler_factory(optimizer)
    loss_fn, every = torch.nn.CrossEntropyLoss(), cfg.trainer.log_every_n_steps
    loader = datamodule.train_dataloader()
    log = (run_dir / "plain.csv").open("w")
    start = time.perf_counter()
    net.train()
    step, loss_sum, count = 0, torch.zeros(()), 0
    for epoch in range(cfg.trainer.max_epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            count += 1
            step += 1
            if step % every == 0:
                log.write(f"{step},{(loss_sum / count).item()}\n")
                loss_sum.zero_()
                count = 0
        scheduler.step()
    end = time.perf_counter()
    log.close()
    return end - start, end - setup_start


def measure(name: str, repeats: int) -> float:
    overrides, epochs = WORKLOADS[name]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        cfg = compose_config(overrides, epochs, run_dir)
        pl.seed_everything(0, verbose=False)
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        initial = build_module(cfg, datamodule)
        runs = {"recipe": recipe_run, "plain": plain_run, "floor": floor_run}
        loop: dict[str, list[float]] = {kind: [] for kind in runs}
        whole: dict[str, list[float]] = {kind: [] for kind in runs}
        for i in range(repeats + 1):  # the first round warms up caches and allocator and is dropped
            for kind, run in runs.items():
                datamodule.trainer = None  # the plain loop gets the single-process loader, like the recipe
                loop_seconds, whole_seconds = run(cfg, datamodule, copy.deepcopy(initial), run_dir)
                if i:
                    loop[kind].append(loop_seconds)
                    whole[kind].append(whole_seconds)
    med = {kind: (statistics.median(loop[kind]), statistics.median(whole[kind])) for kind in loop}
    steps = epochs * len(datamodule.train_dataloader())
    print(f"{name}: {epochs} epochs x {steps // epochs} steps, {overrides}, medians of {repeats} interleaved runs")
    print(
        f"  training loop: recipe {med['recipe'][0]:.3f}s, plain {med['plain'][0]:.3f}s, "
        f"{1e3 * (med['recipe'][0] - med['plain'][0]) / steps:.3f} ms framework cost per step"
    )
    print(
        f"  whole fit incl. Trainer setup/teardown: recipe {med['recipe'][1]:.3f}s, plain {med['plain'][1]:.3f}s, "
        f"ratio {med['recipe'][1] / med['plain'][1]:.3f}"
    )
    print(
        f"  bare LightningModule under the same Trainer: {med['floor'][0]:.3f}s, "
        f"{1e3 * (med['floor'][0] - med['plain'][0]) / steps:.3f} ms Lightning cost per step, "
        f"recipe over floor {med['recipe'][0] / med['floor'][0]:.3f}"
    )
    print(f"ratio {name} lightning floor: {med['floor'][0] / med['plain'][0]:.3f}")
    ratio = med["recipe"][0] / med["plain"][0]
    print(f"ratio {name}: {ratio:.3f}")
    return ratio


def interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The median of each measure, run alternated after a dropped warm-up (launch.alternated)."""
    return {name: statistics.median(found) for name, found in alternated(measures, repeats).items()}


def print_row(heading: str, detail: str, name: str, ratio: float) -> float:
    print(heading)
    print(f"  {detail}")
    print(f"ratio {name}: {ratio:.2f}")
    return ratio


def epoch_samples_per_second(loader: DataLoader) -> float:
    """One full pass over `loader`: samples per second."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch[0])
    return count / (time.perf_counter() - start)


def data_path(repeats: int) -> float:
    """The recipe's MNIST loader vs torchvision's MNIST + ToTensor + Normalize, on the same IDX files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mnist_idx(Path(tmp) / "mnist", n_train=60_000, n_test=10_000)
        cfg = compose_config(["data=mnist", f"data.root={root}"], 1, Path(tmp) / "run")
        start = time.perf_counter()
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        decode = time.perf_counter() - start
        stats = cfg.data.normalize
        plain_set = datasets.MNIST(
            str(root),
            train=True,
            transform=T.Compose([T.ToTensor(), T.Normalize(list(stats["mean"]), list(stats["std"]))]),
        )
        med = interleaved(
            {
                "recipe": lambda: epoch_samples_per_second(datamodule.train_dataloader()),
                "plain": lambda: epoch_samples_per_second(
                    DataLoader(plain_set, batch_size=cfg.data.batch_size, shuffle=True)
                ),
            },
            repeats,
        )
    return print_row(
        f"data path: MNIST IDX files, 60,000 28x28 images, batch {cfg.data.batch_size}, medians of "
        f"{repeats} epochs each",
        f"recipe loader {med['recipe']:,.0f} samples/s (after decoding once in {decode:.2f}s), "
        f"torchvision MNIST + ToTensor + Normalize {med['plain']:,.0f} samples/s",
        "data path",
        med["recipe"] / med["plain"],
    )


def wall_seconds(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def startup(repeats: int) -> float:
    """`recipes.train debug=fast_dev_run` against the bare `import torch, lightning` floor."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(2 * repeats + 2))
        med = interleaved(
            {
                "recipe": lambda: wall_seconds(
                    [
                        sys.executable,
                        "-m",
                        "recipes.train",
                        "debug=fast_dev_run",
                        f"hydra.run.dir={tmp}/run{next(runs)}",
                    ],
                    REPO,
                ),
                "floor": lambda: wall_seconds([sys.executable, "-c", "import torch, lightning"], REPO),
            },
            repeats,
        )
    return print_row(
        f"start-up: medians of {repeats} interleaved runs",
        f"python -m recipes.train debug=fast_dev_run {med['recipe']:.2f}s, python -c 'import torch, "
        f"lightning' {med['floor']:.2f}s: {med['recipe'] - med['floor']:.2f}s over the floor",
        "start-up",
        med["recipe"] / med["floor"],
    )


ROWS = ("loop", "data", "startup", "load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each loop per workload")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS[:-1]),
        choices=ROWS,
        help="loop: the training-loop workloads; data: the data path; startup: fast_dev_run wall time; "
        "load: scripts/bench_load.py (not by default: it keeps every core busy)",
    )
    parser.add_argument("--side-repeats", type=int, default=3, help="timed runs of the data, start-up and load rows")
    args = parser.parse_args()
    quiet_libraries()
    drop_nvml_check_without_gpus()  # as recipes.train does (a plain PyTorch program never sets it)
    torch.use_deterministic_algorithms(True)  # what trainer=cpu sets: both loops run under it from the start
    if "loop" in args.rows:
        for name in args.workloads:
            measure(name, args.repeats)
    if "data" in args.rows:
        data_path(args.side_repeats)
    if "startup" in args.rows:
        startup(args.side_repeats)
    if "load" in args.rows:
        load_main(["--repeats", str(args.side_repeats)])


if __name__ == "__main__":
    main()
