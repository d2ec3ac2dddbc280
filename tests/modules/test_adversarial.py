"""task=adversarial (recipe=adv_train): adversarial training raises PGD accuracy over the standard model
on the same budget, the catastrophic-overfitting guard restores the last good weights and stops on a
constructed collapse (recorded in results.json's terms), bad knobs are refused at start-up, and the
task runs like every classifier recipe (DDP, resume, export; slow pass)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from recipes.assembly.startup_checks import check_startup
from recipes.assembly.training import build_training
from recipes.errors import RecipeError
from recipes.train import run
from tests.helpers.build import compose_train
from tests.helpers.runs import train_ok

QUIET = [
    "logger=csv",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
]


def test_adversarial_training_raises_robust_accuracy_over_the_standard_model(tmp_path: Path) -> None:
    """Same net (MLP [300, 100]), data and epochs; both measured by the same PGD-10 at eps 0.2 (at 0.1
    the standard MLP on 8x8 digits still keeps ~60%)."""
    common = [*QUIET, "trainer.max_epochs=6", "attack=pgd", "attack.eps=[0.2]", "attack.steps=10", "export=none"]
    robust = {}
    for name, recipe in (("standard", ["recipe=baseline"]), ("pgd", ["recipe=adv_train", "model=mlp", "task.eps=0.2"])):
        cfg = compose_train(tmp_path / name, *recipe, *common)
        results = run(cfg, {"recipe": recipe[0].split("=")[1], "task": "x", "attack": "pgd"})
        robust[name] = results["robustness"]["results"][0]["robust_acc"]
        if name == "pgd":
            assert results["metrics"]["test/robust_acc"] > 0 and results["adversarial"]["method"] == "pgd"
            # null train_eps: trained at train_eps_scale (1.2) x eps, PGD-10 with Madry's 2.5 eps / steps
            assert results["adversarial"]["train_eps"] == pytest.approx(0.24)
            assert results["adversarial"]["train_steps"] == 10
            assert results["adversarial"]["train_step_size"] == pytest.approx(2.5 * 0.24 / 10)
            written = json.loads((tmp_path / name / "results.json").read_text())
            assert written["adversarial"]["guard"] == {"fired": False}
    assert robust["pgd"] >= robust["standard"] + 0.2, robust


class Collapse(Callback):
    """At the second validation the net turns into a constant predictor (class 0 everywhere), the
    collapse the guard must catch; the weights of the first epoch are kept to compare with."""

    def __init__(self) -> None:
        self.first_epoch: dict[str, torch.Tensor] = {}

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != 1:
            return
        self.first_epoch = {k: v.clone() for k, v in pl_module.good_weights.items()}
        head = pl_module.net[-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.arange(head.bias.numel(), 0, -1, dtype=head.bias.dtype))


def test_overfitting_guard_restores_the_last_good_weights_and_stops(tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path,
        "recipe=adv_train",
        "model=mlp",
        "task.method=fast",
        "task.eps=0.05",
        "task.guard_drop=0.1",
        "trainer.max_epochs=4",
        *QUIET,
    )
    parts = build_training(cfg, {"recipe": "adv_train", "task": "adversarial"})
    collapse = Collapse()
    parts.trainer.callbacks.append(collapse)
    with pytest.warns(UserWarning, match="catastrophic overfitting at epoch 1"):  # the user is told
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    record = parts.module.run_record()["adversarial"]["guard"]
    assert record["fired"] and record["epoch"] == 1 and record["restored_epoch"] == 0, record
    assert record["robust_acc"] < record["best_robust_acc"] - 0.1
    assert parts.trainer.current_epoch == 2  # stopped after the collapsed epoch, not at max_epochs=4
    restored = parts.module.net.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in collapse.first_epoch.items())


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.method=free", "task.method=free must be one of fgsm_mix, pgd, fast"),
        ("task.eps=-0.1", "task.eps=-0.1 must be in [0, 1]"),
        ("task.train_eps=1.5", "task.train_eps=1.5 must be in [0, 1]"),
        ("task.train_eps_scale=0", "task.train_eps_scale=0 must be positive"),
        ("task.train_eps_scale=20", "task.train_eps_scale=20 must be positive and keep"),
        ("task.train_steps=0", "task.train_steps=0 must be an integer >= 1"),
    ],
)
def test_bad_adversarial_knobs_are_refused_at_start_up(tmp_path: Path, override: str, message: str) -> None:
    cfg = compose_train(tmp_path, "recipe=adv_train", override)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_startup(cfg, {"recipe": "adv_train", "task": "adversarial"})


TINY = [
    "recipe=adv_train",
    "model=mlp",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "logger=csv",
    "task.method=fast",
]


@pytest.mark.slow  # two ranks and an ONNX export: ~25 s on a quiet 2-core machine
def test_adversarial_task_runs_under_ddp_and_exports(tmp_path: Path) -> None:
    ddp = train_ok(tmp_path / "ddp", *TINY, "trainer=ddp_sim", "export=onnx")
    assert {"test/acc", "test/robust_acc", "test/loss"} <= set(ddp["metrics"]) and ddp["parallel"]["world_size"] == 2
    assert ddp["export"]["top1_agreement"] == 1.0 and ddp["monitor"]["metric"] == "val/robust_acc"


@pytest.mark.slow  # three short runs: ~20 s on a quiet 2-core machine
def test_adversarial_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Interrupted after epoch 1 of 2 (the 2-epoch LR schedule throughout), then `ckpt_path=last`: the
    same weights, bit for bit, as the uninterrupted run (PGD's random starts come from the restored RNG)."""
    straight = train_ok(tmp_path / "straight", *TINY)
    train_ok(tmp_path / "resumed", *TINY, "trainer.max_steps=4")  # 4 batches per epoch
    resumed = train_ok(tmp_path / "resumed", *TINY, "ckpt_path=last")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 8)
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
    assert resumed["metrics"] == straight["metrics"] and resumed["adversarial"] == straight["adversarial"]
