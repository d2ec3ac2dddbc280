"""What keeps the recipes fast, checked on real runs: in-memory data served as pre-transformed batches
with augmentation per batch on the device, a progress bar that stops at once, no heavy optional
import in a plain run, and the GPU-path options (channels_last, torch.compile)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torchvision.transforms import v2
from typing_extensions import override

from callbacks.progress import PromptRichProgressBar
from modules.classifier import ClassifierModule
from modules.nets import lstm as lstm_module
from modules.nets.mlp import MLP
from modules.nets.projected_lstm import stepwise_lstmp
from recipes.assembly.acceleration import CompileNet
from recipes.assembly.tasks import build_datamodule, build_module
from recipes.data.digits import DigitsDataModule
from recipes.data.splits import Batches, ConcatSplit, TensorSplit
from recipes.data.synthetic_files import write_mnist_idx
from recipes.data.transforms import compose
from recipes.data.vision import TorchvisionDataModule
from recipes.errors import RecipeError
from recipes.runtime.libraries import VARIABLE, drop_nvml_check_without_gpus
from tests.helpers import REPO
from tests.helpers.build import compose_train, quiet_trainer


def tiny_classifier() -> ClassifierModule:
    return ClassifierModule(MLP([1, 8, 8], 10, hidden=[16]), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def short_trainer(*callbacks: pl.Callback, batches: int = 2) -> pl.Trainer:
    return quiet_trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=1,
        callbacks=list(callbacks),
    )


class BatchProbe(pl.Callback):
    """Keeps the training batches as the step receives them (after the device transfer and its hooks)."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, ...]] = []

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.batches.append(tuple(t.clone() for t in batch))


# --- data path ----------------------------------------------------------------------------------


def test_mnist_is_decoded_once_and_served_as_batches(tmp_path: Path) -> None:
    """The in-memory images equal the per-image torchvision pipeline's output, and a loader batch is
    one indexing of them (no per-image transform, no collate)."""
    write_mnist_idx(tmp_path, n_train=40, n_test=10)
    dm = TorchvisionDataModule(
        dataset="MNIST",
        root=str(tmp_path),
        image_size=16,
        channels=3,
        batch_size=8,
        normalize={"mean": [0.1307], "std": [0.3081]},
    )
    dm.setup("fit")
    assert isinstance(dm.train_set, TensorSplit) and isinstance(dm.test_set, TensorSplit)
    per_image = compose([*dm.deterministic_steps(), *dm._normalize])
    for k in (0, 5, len(dm.train_set) - 1):
        pil, label = dm.train_set.base[k]
        assert torch.allclose(dm.train_set.images[k], per_image(pil), atol=1e-5)
        assert int(dm.train_set.labels[k]) == label
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, Batches) and loader.num_workers == 0
    order = list(loader.sampler)[:8]
    x, y = next(iter(loader))
    assert torch.equal(x, dm.train_set.images[order]) and torch.equal(y, dm.train_set.labels[order])


def test_augmentation_runs_on_training_batches_after_transfer() -> None:
    """With augmentation the stored training images are not normalized; the data module augments then
    normalizes each training batch after the transfer, and leaves validation batches alone."""
    normalize = {"mean": [0.3], "std": [0.4]}
    dm = DigitsDataModule(batch_size=32, augment=[v2.RandomInvert(p=1.0)], normalize=normalize)
    dm.setup("fit")
    raw_train = dm.train_set.images
    assert 0 <= float(raw_train.min()) and float(raw_train.max()) <= 1  # [0, 1]: normalized per batch
    probe = BatchProbe()
    short_trainer(probe).fit(tiny_classifier(), datamodule=dm)
    order = list(dm.train_dataloader().sampler)[:32]
    assert torch.allclose(probe.batches[0][0], ((1 - raw_train[order]) - 0.3) / 0.4, atol=1e-6)
    plain = DigitsDataModule(batch_size=32, normalize=normalize)
    plain.setup("fit")
    assert torch.allclose(dm.val_set.images, plain.val_set.images)  # validation: normalized once, not inverted


@pytest.mark.parametrize(("draws", "distinct"), [(1, False), (32, True)])
def test_augment_draws_split_a_batch_into_independent_draws(draws: int, distinct: bool) -> None:
    """One random flip decision per group: with one group the whole batch flips alike."""
    dm = DigitsDataModule(batch_size=32, augment=[v2.RandomHorizontalFlip(p=0.5)], normalize=None, augment_draws=draws)
    dm.setup("fit")
    probe = BatchProbe()
    pl.seed_everything(0, verbose=False)
    short_trainer(probe, batches=3).fit(tiny_classifier(), datamodule=dm)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(0)
    order = list(sampler)
    mixed = []
    for i, (x, _) in enumerate(probe.batches):
        raw = dm.train_set.images[order[32 * i : 32 * (i + 1)]]
        flipped = torch.isclose(x, raw.flip(-1)).flatten(1).all(1)
        kept = torch.isclose(x, raw).flatten(1).all(1)
        assert bool((flipped | kept).all())
        decided = {bool(f) for f, k in zip(flipped, kept) if not (f and k)}  # symmetric images say nothing
        mixed.append(decided == {True, False})
    assert any(mixed) if distinct else not any(mixed)


def test_mixed_batches_are_finished_per_domain() -> None:
    """Old and new domain in one batch: each part's rows get that part's own normalization."""
    old = TensorSplit(torch.zeros(4, 1, 2, 2), torch.zeros(4), finish=v2.Normalize([0.5], [0.5]))
    new = TensorSplit(torch.ones(3, 1, 2, 2), torch.ones(3))
    x, y = ConcatSplit([old, new]).raw_batch([5, 0, 6, 3])
    assert x[:, 0, 0, 0].tolist() == [1.0, -1.0, 1.0, -1.0] and y.tolist() == [1, 0, 1, 0]


# --- progress bar -------------------------------------------------------------------------------


class StopTimer(pl.Callback):
    """Placed around the bar: the time the bar's own on_train_end (its stop) takes."""

    def __init__(self, start: bool, record: dict[str, float]) -> None:
        self.start, self.record = start, record

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["start" if self.start else "end"] = time.perf_counter()


class CountingBar(PromptRichProgressBar):
    """The bar as configured, counting how often batches gathered its metrics."""

    updates = 0

    @override
    def _update_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.updates += 1
        super()._update_metrics(trainer, pl_module)


def test_progress_bar_stops_at_once_and_updates_only_when_it_redraws() -> None:
    """At one redraw per second Lightning's bar waits up to a second at every stop and gathers the
    metrics at every batch; this one does neither, and still ends the epoch's bar at its last batch."""
    record: dict[str, float] = {}
    bar = CountingBar(refresh_rate=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=60,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[StopTimer(True, record), bar, StopTimer(False, record)],
    )
    dm = DigitsDataModule(batch_size=16)  # 79 batches an epoch, 60 of them trained
    start = time.perf_counter()
    trainer.fit(tiny_classifier(), datamodule=dm)
    seconds = time.perf_counter() - start
    assert bar._progress_stopped
    assert record["end"] - record["start"] < 0.25, record["end"] - record["start"]
    assert bar.updates <= seconds + 3 and bar.updates < 60, (bar.updates, seconds)  # ~one a second, not a batch
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.completed == task.total == 60


# --- per step -----------------------------------------------------------------------------------


def test_no_nvml_probe_per_step_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's NVML-based CUDA check (re-run by Adam/AdamW every step) is dropped where there is no GPU."""
    import lightning  # noqa: F401 - sets the variable

    monkeypatch.setenv(VARIABLE, "1")
    drop_nvml_check_without_gpus()
    if torch.cuda.device_count() == 0:
        assert VARIABLE not in os.environ
    else:
        assert os.environ[VARIABLE] == "1"  # a GPU machine keeps fork-safe checks


# --- start-up -----------------------------------------------------------------------------------

HEAVY_OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "torch_pruning", "torch.utils.tensorboard", "tensorboard")

_PROBE = """
import atexit, json, runpy, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(m for m in sys.modules if m in {heavy}))))
sys.argv = ["recipes.train", *sys.argv[1:]]
runpy.run_module("recipes.train", run_name="__main__")
"""


def test_plain_run_imports_no_heavy_optional_module(run_dir: Path) -> None:
    """A baseline smoke test (build, fit, test, results) imports none of the export, pruning or
    TensorBoard packages: they load where they are used."""
    code = _PROBE.format(heavy=repr(set(HEAVY_OPTIONAL)))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "debug=fast_dev_run",
            f"hydra.run.dir={run_dir}",
            "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # this checkout's recipes, not an installed one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "results.json").is_file()
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES ")][-1]
    assert json.loads(line[len("MODULES ") :]) == []
    assert not (run_dir / "tensorboard").exists()  # fast_dev_run: Lightning's loggers are off, the recipe's too


# --- GPU path options ---------------------------------------------------------------------------


class InputProbe(pl.Callback):
    """Records the memory layout of the input reaching the net's first convolution, and whether the
    net's forward is compiled, during training."""

    def __init__(self, conv: bool = True) -> None:
        self.conv = conv
        self.channels_last: list[bool] = []
        self.compiled: list[bool] = []

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.conv:
            return
        conv = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_pre_hook(
            lambda module, args: self.channels_last.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.compiled.append(pl_module.net._compiled_call_impl is not None)


def built(tmp_path: Path, *overrides: str):
    cfg = compose_train(tmp_path, *overrides)
    datamodule = build_datamodule(cfg)
    return cfg, datamodule, build_module(cfg, datamodule)


def test_channels_last_keeps_weights_and_inputs_in_nhwc(tmp_path: Path) -> None:
    cfg, datamodule, module = built(tmp_path, "model=convnet", "data.image_size=16", "model.channels_last=true")
    weights = [p for p in module.net.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    probe = InputProbe()
    short_trainer(probe).fit(module, datamodule=datamodule)
    assert probe.channels_last and all(probe.channels_last)
    plain = built(tmp_path, "model=convnet", "data.image_size=16")[2]
    assert plain.state_dict().keys() == module.state_dict().keys()


def test_model_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="model.compile='yes' must be true or false"):
        built(tmp_path, "model.compile=yes")


@pytest.mark.slow  # Inductor compiles C++ kernels: tens of seconds on a CPU
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's Inductor backend needs a C++ compiler (g++)")
def test_compile_trains_the_compiled_net_and_ships_the_eager_one(tmp_path: Path) -> None:
    """model.compile=true: the fit runs the compiled forward (Inductor on CPU), the weights keep their
    names, and after the fit the net is eager again (what the test, export and evaluate run)."""
    cfg, datamodule, module = built(tmp_path, "model.compile=true", "model.hidden=[32]")
    probe = InputProbe(conv=False)  # an MLP has no convolution
    keys = set(module.state_dict())
    short_trainer(CompileNet(), probe, batches=3).fit(module, datamodule=datamodule)
    assert probe.compiled == [True, True, True]
    assert module.net._compiled_call_impl is None and set(module.state_dict()) == keys
    assert torch.isfinite(torch.stack([p.detach().sum() for p in module.parameters()])).all()


@pytest.mark.slow  # Inductor compiles the unrolled loop's C++ kernels: tens of seconds on a CPU
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's Inductor backend needs a C++ compiler (g++)")
def test_compiled_lstmp_fits_through_the_step_by_step_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.compile=true on an LSTMP: the fit traces the step-by-step loop (TorchDynamo's allow_rnn on
    for the fit only), the weights keep nn.LSTM's names, and the net ships eager."""
    traced = []

    def recorded(lstm: torch.nn.Module, x: torch.Tensor):
        traced.append(x.shape)
        return stepwise_lstmp(lstm, x)

    monkeypatch.setattr(lstm_module, "stepwise_lstmp", recorded)
    torch._dynamo.reset()
    cfg, datamodule, module = built(
        tmp_path, "task=lm", "data=pytext", "data.seq_len=16", "data.batch_size=4", "model=lstm", "model.hidden=16",
        "model.embed=8", "model.proj_size=4", "model.compile=true",
    )  # fmt: skip
    keys = set(module.state_dict())
    short_trainer(CompileNet(), batches=3).fit(module, datamodule=datamodule)
    assert traced and not torch._dynamo.config.allow_rnn
    assert module.net._compiled_call_impl is None and set(module.state_dict()) == keys
    assert torch.isfinite(torch.stack([p.detach().sum() for p in module.parameters()])).all()
