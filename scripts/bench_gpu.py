"""GPU throughput of the recipe's training loop against a plain PyTorch AMP loop doing the same work.

resnet18 (model=resnet18) on synthetic 3x32x32 images of 10 classes generated in memory, batch 256, fp16
mixed precision: the recipe's loop is the one scripts/bench_overhead.py times (its `recipe_run`: the
recipe's LightningModule under a Trainer with the recipe's settings, here trainer=gpu with
trainer.precision=16-mixed); the plain loop is torch.autocast + GradScaler on the same net, optimizer,
data and steps, on the same device. Four rows: with and without model.channels_last and model.compile
(the plain loop gets the same channels-last net, and nn.Module.compile where the recipe compiles). Each
loop runs one epoch of `--warmup` + `--steps` batches and is timed over the last `--steps` (compilation
and cuDNN autotuning fall in the warm-up); runs alternate after one dropped warm-up round, medians
compared. Prints samples/s of each and `ratio <row>: recipe / plain` per row.

    python scripts/bench_gpu.py                        # needs a CUDA GPU; exits 2 with one line without
    python scripts/bench_gpu.py --steps 50 --repeats 1 # a quick look
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's recipes and scripts, not an installed copy

from recipes.assembly.acceleration import CompileNet
from recipes.assembly.tasks import build_module
from recipes.runtime.libraries import quiet_libraries
from scripts.bench_overhead import compose_config, interleaved, recipe_run

ERROR = "error: scripts/bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)"
BATCH, SHAPE, CLASSES = 256, (3, 32, 32), 10


class SyntheticImages(pl.LightningDataModule):
    """Random 3x32x32 images and labels, held in memory: the data contract (recipes.data.contract) and
    nothing else, so both loops read the same batches and no decoding or augmentation is timed."""

    input_shape, num_classes, return_index = SHAPE, CLASSES, False

    def __init__(self, batches: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batches * BATCH, *SHAPE, generator=generator)
        self.dataset = TensorDataset(images, torch.randint(0, CLASSES, (batches * BATCH,), generator=generator))

    def training_dataset(self) -> TensorDataset:
        return self.dataset

    def pixel_normalization(self) -> None:
        return None

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=BATCH, shuffle=True, drop_last=True, pin_memory=True)

    @override
    def val_dataloader(self) -> DataLoader:  # never run (recipe_run has no validation); Lightning asks for it
        return DataLoader(self.dataset, batch_size=BATCH)


class SteadyTimer(pl.Callback):
    """The recipe loop's seconds from the start of batch `warmup` to the end of training, on the GPU's clock."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def recipe_samples_per_second(cfg, data: SyntheticImages, initial, compiled: bool, warmup: int, run_dir: Path) -> float:
    timer = SteadyTimer(warmup)
    recipe_run(cfg, data, copy.deepcopy(initial), run_dir, callbacks=[timer, *([CompileNet()] if compiled else [])])
    return (len(data.train_dataloader()) - warmup) * BATCH / timer.seconds


def plain_samples_per_second(cfg, data: SyntheticImages, initial, compiled: bool, warmup: int) -> float:
    """torch.autocast + GradScaler: the recipe module's net, optimizer, schedule and loss, nothing else;
    the mean training loss read back every log_every_n_steps steps, as the recipe logs it."""
    module = copy.deepcopy(initial)
    device = torch.device("cuda", 0)
    net = module.net.to(device)
    if compiled:
        net.compile()
    optimizer = module.optimizer_factory(net.parameters())
    scheduler = module.scheduler_factory(optimizer)
    scaler, loss_fn, every = torch.amp.GradScaler("cuda"), torch.nn.CrossEntropyLoss(), cfg.trainer.log_every_n_steps
    loss_sum = torch.zeros((), device=device)
    net.train()
    for step, (x, y) in enumerate(data.train_dataloader()):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()
        if (step + 1) % every == 0:
            (loss_sum / every).item()
            loss_sum.zero_()
    scheduler.step()
    torch.cuda.synchronize()
    return (step + 1 - warmup) * BATCH / (time.perf_counter() - start)


def row(channels_last: bool, compiled: bool, args: argparse.Namespace, run_dir: Path) -> float:
    overrides = [
        "model=resnet18",
        "trainer=gpu",
        "trainer.precision=16-mixed",
        f"data.batch_size={BATCH}",
        f"model.channels_last={str(channels_last).lower()}",
        f"model.compile={str(compiled).lower()}",
    ]
    cfg = compose_config(overrides, 1, run_dir)
    pl.seed_everything(0, verbose=False)
    data = SyntheticImages(args.warmup + args.steps)
    initial = build_module(cfg, data)  # channels_last: the net comes in NHWC, as recipes.train builds it
    med = interleaved(
        {
            "recipe": lambda: recipe_samples_per_second(cfg, data, initial, compiled, args.warmup, run_dir),
            "plain": lambda: plain_samples_per_second(cfg, data, initial, compiled, args.warmup),
        },
        args.repeats,
    )
    name = f"channels_last={str(channels_last).lower()} compile={str(compiled).lower()}"
    ratio = med["recipe"] / med["plain"]
    print(f"{name}: recipe {med['recipe']:,.0f} samples/s, plain AMP {med['plain']:,.0f} samples/s")
    print(f"ratio {name}: {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps of each loop per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, cuDNN autotuning)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop per row")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(ERROR, file=sys.stderr)
        sys.exit(2)
    quiet_libraries()
    print(
        f"resnet18, synthetic {'x'.join(map(str, SHAPE))} images, {CLASSES} classes, batch {BATCH}, fp16 AMP, "
        f"{args.steps} steps timed after {args.warmup}, medians of {args.repeats} interleaved runs, "
        f"{torch.cuda.get_device_name(0)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for channels_last, compiled in itertools.product((False, True), repeat=2):
            row(channels_last, compiled, args, Path(tmp))


if __name__ == "__main__":
    main()
