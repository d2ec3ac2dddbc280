"""Transfer recipes: the distillation loss against a hand computation, a frozen teacher that never
trains, KLD adaptation as a mixed-target cross-entropy, fine-tuning knobs (frozen backbone, backbone
LR, head re-initialization), and every transfer recipe end to end with weights_only checkpoints."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modules.adapt import AdaptModule
from modules.classifier import ClassifierModule, head
from modules.distill import DistillModule, distillation_loss
from modules.nets.convnet import ConvNet
from modules.nets.mlp import MLP
from recipes.assembly import prerequisites, training
from recipes.assembly.tasks import build_datamodule
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import quiet_trainer
from tests.helpers.runs import train, train_ok, train_ok_in_process

SHAPE = (1, 8, 8)
SGD = partial(torch.optim.SGD, lr=0.1)
# Subprocess runs: one short epoch, light loggers. Top-level trainer keys reach the prerequisites too.
FAST = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "logger=csv",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
)


def short_fit(module: pl.LightningModule, datamodule: pl.LightningDataModule) -> pl.Trainer:
    """A real fit of 3 training batches and 1 validation batch on CPU."""
    datamodule.return_index = getattr(module, "needs_sample_index", False)  # as build_module does
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def hand_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    exp = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return torch.log(exp / exp.sum(dim=1, keepdim=True))


def hand_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the batch."""
    log_p, log_q = hand_log_softmax(teacher / temperature), hand_log_softmax(student / temperature)
    return (torch.exp(log_p) * (log_p - log_q)).sum(dim=1).mean()


def hand_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -hand_log_softmax(logits)[torch.arange(len(targets)), targets].mean()


# --- 1. the distillation loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_matches_a_hand_computation(alpha: float, temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, 10, (16,), generator=gen)
    expected = alpha * hand_ce(student, targets) + (1 - alpha) * temperature**2 * hand_kl(teacher, student, temperature)
    loss = distillation_loss(student, teacher, targets, temperature, alpha)
    assert torch.allclose(loss, expected, rtol=1e-9, atol=1e-12), (loss, expected)
    assert hand_kl(teacher, student, temperature) > 0.01  # the soft term is not trivially zero here


def test_distillation_loss_scales_the_soft_term_by_t_squared() -> None:
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    targets = torch.randint(0, 10, (8,), generator=gen)
    soft_only = distillation_loss(student, teacher, targets, temperature=4.0, alpha=0.0)
    assert torch.allclose(soft_only, 16 * hand_kl(teacher, student, 4.0), rtol=1e-5)
    assert not torch.allclose(soft_only, hand_kl(teacher, student, 4.0), rtol=1e-2)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_is_zero_for_identical_logits(temperature: float) -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(2)) * 5
    targets = torch.randint(0, 10, (8,))
    assert abs(distillation_loss(logits, logits.clone(), targets, temperature, alpha=0.0).item()) < 1e-6


# --- 2. the teacher is frozen -----------------------------------------------------------------------------
def test_teacher_never_trains_and_its_logits_are_cached() -> None:
    torch.manual_seed(0)
    student = MLP(input_shape=SHAPE, num_classes=10, hidden=[16])
    teacher = MLP(input_shape=SHAPE, num_classes=10, hidden=[16], dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in teacher.modules())
    teacher.train()  # the module must put it in eval mode itself
    before = cloned(teacher.state_dict())
    student_before = cloned(student.state_dict())
    module = DistillModule(student, SGD, teacher=teacher, temperature=4.0, alpha=0.1, cache_teacher_logits=True)
    datamodule = DigitsDataModule(batch_size=64)
    trainer = short_fit(module, datamodule)

    assert_same_state(teacher.state_dict(), before)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training and all(not m.training for m in teacher.modules())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert optimized == {id(p) for p in student.parameters()}
    assert not [k for k in module.state_dict() if k.startswith("teacher")]
    assert all(not name.startswith("teacher") for name, _ in module.named_parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items()), "student trained"

    # The cache holds the (eval-mode, so deterministic) teacher logits of every training sample, in order.
    cache = module._teacher_cache
    assert cache is not None
    dataset = datamodule.training_dataset()
    with torch.no_grad():
        expected = torch.cat([teacher(batch[0]) for batch in DataLoader(dataset, batch_size=100, shuffle=False)])
    assert cache.shape == (len(dataset), 10)
    assert torch.allclose(cache, expected, atol=1e-6)


# --- 3. KLD adaptation ------------------------------------------------------------------------------------
def adapt_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(32, *SHAPE, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def perturb(net: nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)


def test_adapt_starts_from_the_source_and_is_ce_at_alpha_one() -> None:
    torch.manual_seed(0)
    source = MLP(input_shape=SHAPE, num_classes=10, hidden=[16])
    net = MLP(input_shape=SHAPE, num_classes=10, hidden=[16])
    module = AdaptModule(net, SGD, source=source, alpha=1.0)
    assert_same_state(net.state_dict(), source.state_dict())
    assert module.temperature == 1.0
    perturb(net)  # so that source and adapted outputs differ; the KL term then does not vanish
    x, y = adapt_batch()
    loss = module.training_step((x, y), 0)
    assert torch.allclose(loss, F.cross_entropy(net(x), y), atol=1e-6)


def test_adapt_loss_is_the_mixed_target_cross_entropy() -> None:
    torch.manual_seed(0)
    source = MLP(input_shape=SHAPE, num_classes=10, hidden=[16])
    net = MLP(input_shape=SHAPE, num_classes=10, hidden=[16])
    module = AdaptModule(net, SGD, source=source, alpha=0.5)
    perturb(net)
    x, y = adapt_batch()
    loss = module.training_step((x, y), 0).double()
    with torch.no_grad():
        adapted, reference = net(x).double(), source(x).double()
    kl = hand_kl(reference, adapted, 1.0)
    assert kl > 0.01
    assert torch.allclose(loss, 0.5 * hand_ce(adapted, y) + 0.5 * kl, atol=1e-5)
    # Equivalently: CE against 0.5 * onehot(y) + 0.5 * p_source, minus 0.5 * the source entropy.
    p_source = torch.exp(hand_log_softmax(reference))
    target = 0.5 * F.one_hot(y, 10).double() + 0.5 * p_source
    mixed_ce = -(target * hand_log_softmax(adapted)).sum(dim=1).mean()
    entropy = -(p_source * torch.log(p_source)).sum(dim=1).mean()
    assert torch.allclose(loss, mixed_ce - 0.5 * entropy, atol=1e-5)


# --- 4. fine-tuning knobs ---------------------------------------------------------------------------------
def convnet(num_classes: int = 10) -> ConvNet:
    return ConvNet(SHAPE, num_classes, channels=[8, 16])


def backbone_state(net: nn.Sequential) -> dict[str, torch.Tensor]:
    """Every weight and buffer outside the head (the last block), cloned."""
    head_prefix = f"{len(net) - 1}."
    return cloned({k: v for k, v in net.state_dict().items() if not k.startswith(head_prefix)})


def backbone_params(net: nn.Sequential) -> list[nn.Parameter]:
    return [p for block in list(net)[:-1] for p in block.parameters()]


def pretrained(num_classes: int = 10) -> ConvNet:
    """A ConvNet whose BatchNorm statistics are not the defaults, so a missed copy would show."""
    net = convnet(num_classes)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return net


def test_frozen_backbone_stays_bitwise_unchanged() -> None:
    torch.manual_seed(0)
    init = pretrained()
    init_state = cloned(init.state_dict())
    net = convnet()
    module = ClassifierModule(net, SGD, init=init, freeze_backbone=True)
    assert_same_state(net.state_dict(), init_state)  # the head is kept too (same class count)
    head_before = cloned(head(net).state_dict())
    trainer = short_fit(module, DigitsDataModule(batch_size=64))

    assert_same_state(backbone_state(net), backbone_state(init))  # BN statistics included
    assert_same_state(init.state_dict(), init_state)
    assert any(not torch.equal(v, head_before[k]) for k, v in head(net).state_dict().items()), "the head trained"
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in head(net).parameters()}
    assert all(not p.requires_grad for p in backbone_params(net))


def test_backbone_lr_scale_gives_two_param_groups() -> None:
    net = convnet()
    scheduler = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=5)
    module = ClassifierModule(net, partial(torch.optim.AdamW, lr=0.01), scheduler=scheduler, backbone_lr_scale=0.1)
    built = module.configure_optimizers()
    groups = built["optimizer"].param_groups
    assert len(groups) == 2
    backbone_group, head_group = groups
    assert {id(p) for p in head_group["params"]} == {id(p) for p in head(net).parameters()}
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in backbone_params(net)}
    assert backbone_group["lr"] / head_group["lr"] == pytest.approx(0.1)
    assert head_group["lr"] == pytest.approx(0.01)
    # The schedule starts from the scaled LRs.
    assert backbone_group["initial_lr"] / head_group["initial_lr"] == pytest.approx(0.1)
    # Plain fine-tuning: one group.
    assert len(ClassifierModule(convnet(), SGD).configure_optimizers().param_groups) == 1


def test_reinit_head_loads_the_backbone_into_another_class_count() -> None:
    torch.manual_seed(0)
    init = pretrained(10)
    net = convnet(3)
    fresh_head = cloned(head(net).state_dict())
    ClassifierModule(net, SGD, init=init, reinit_head=True)
    assert_same_state(backbone_state(net), backbone_state(init))
    assert_same_state(head(net).state_dict(), fresh_head)
    assert net(torch.randn(2, *SHAPE)).shape == (2, 3)


def test_class_count_mismatch_without_reinit_head_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"task\.reinit_head=true"):
        ClassifierModule(convnet(3), SGD, init=pretrained(10), reinit_head=False)


# --- 5. every transfer recipe end to end --------------------------------------------------------------------
def check_run(run_dir: Path, results: dict[str, Any], prerequisite: str, domains: bool) -> dict[str, Any]:
    metrics = results["metrics"]
    assert 0 <= metrics["test/acc"] <= 1
    if domains:
        assert 0 <= metrics["test/acc_source"] <= 1 and 0 <= metrics["test/acc_target"] <= 1
    ckpt = torch.load(run_dir / results["checkpoint"], weights_only=True)
    assert "recipe" in ckpt and ckpt["state_dict"]
    sub = json.loads((run_dir / prerequisite / "results.json").read_text())
    torch.load(run_dir / prerequisite / sub["checkpoint"], weights_only=True)
    return ckpt


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_distill_recipe_end_to_end(run_dir: Path) -> None:
    results = train_ok(run_dir, "recipe=distill", *FAST, "prerequisites.teacher.trainer.max_epochs=1", "export=onnx")
    assert results["recipe"] == "distill" and results["task"] == "distill"
    assert results["export"]["top1_agreement"] == 1.0  # the student exports like any classifier
    ckpt = check_run(run_dir, results, "teacher", domains=False)
    assert not [k for k in ckpt["state_dict"] if "teacher" in k]
    teacher_ckpt = Path(ckpt["recipe"]["config"]["task"]["teacher_ckpt"])
    assert teacher_ckpt.is_file()
    assert teacher_ckpt.resolve().is_relative_to((run_dir / "teacher").resolve())


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_adapt_recipe_end_to_end_and_resume_reuses_the_source(run_dir: Path) -> None:
    results = train_ok(run_dir, "recipe=adapt", *FAST, "prerequisites.source.trainer.max_epochs=1")
    assert results["task"] == "adapt"
    ckpt = check_run(run_dir, results, "source", domains=True)
    source_ckpt = Path(ckpt["recipe"]["config"]["task"]["source_ckpt"])
    assert source_ckpt.is_file() and source_ckpt.resolve().is_relative_to((run_dir / "source").resolve())
    source_files = {p: p.stat().st_mtime_ns for p in (run_dir / "source").rglob("*.ckpt")}
    assert source_files

    again = train_ok(run_dir, "recipe=adapt", *FAST, "prerequisites.source.trainer.max_epochs=1", "ckpt_path=last")
    assert 0 <= again["metrics"]["test/acc"] <= 1
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "source").rglob("*.ckpt")} == source_files
    torch.load(run_dir / again["checkpoint"], weights_only=True)


@pytest.mark.parametrize("recipe", ["finetune", pytest.param("data_mix", marks=pytest.mark.slow)])
def test_init_recipes_end_to_end(recipe: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def counted(cfg: Any) -> pl.LightningDataModule:
        built.append(cfg.paths.run_dir)
        return build_datamodule(cfg)

    for module in (prerequisites, training):
        monkeypatch.setattr(module, "build_datamodule", counted)
    results = train_ok_in_process(run_dir, f"recipe={recipe}", *FAST, "prerequisites.init.trainer.max_epochs=1")
    # the start-up check's data modules are the ones the runs train with: each built once
    assert built == [str(run_dir), str(run_dir / "init")], built
    assert results["recipe"] == recipe
    ckpt = check_run(run_dir, results, "init", domains=True)
    assert Path(ckpt["recipe"]["config"]["task"]["init_ckpt"]).is_file()


# --- 6. a class-count mismatch on the command line ----------------------------------------------------------
def image_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(60 + 60 * c, 30, (8, 8)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_class_count_mismatch_is_a_one_line_cli_error(tmp_path: Path) -> None:
    digits = tmp_path / "digits"
    results = train_ok(digits, *FAST)
    init_ckpt = digits / results["checkpoint"]
    root = image_folder(tmp_path / "images")
    finetune = (
        "recipe=finetune",
        f"task.init_ckpt={init_ckpt}",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=8",
        "data.channels=1",
        "data.num_workers=0",
        "~prerequisites",
    )

    bad = tmp_path / "bad"
    proc = train(bad, *finetune, *FAST)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "task.reinit_head=true" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (bad / "results.json").exists()

    good = tmp_path / "good"
    fixed = train_ok(good, *finetune, *FAST, "task.reinit_head=true")
    assert 0 <= fixed["metrics"]["test/acc"] <= 1
    ckpt = torch.load(good / fixed["checkpoint"], weights_only=True)
    assert ckpt["recipe"]["data"]["num_classes"] == 3
