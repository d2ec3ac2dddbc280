"""recipe=gan through the core, as a user runs it: the feature classifier trained first, results.json's
GAN metrics, sample grids, export of the generator with pruning, recipes.evaluate reproducing the
test metrics, recipes.generate, exact resume of both optimizers, DDP replicas, SVD factoring of the
generator, refusals at start-up."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

import recipes.train
from recipes.assembly.prerequisites import check_buildable
from recipes.data.synthetic_files import write_image_folder
from recipes.errors import RecipeError
from tests.helpers.build import compose_train
from tests.helpers.runs import run_module, train_in_process, train_ok

TINY = [
    "recipe=gan",
    "trainer.max_epochs=3",
    "trainer.check_val_every_n_epoch=1",
    "+trainer.limit_train_batches=5",
    "task.fd_samples=100",
    "task.val_samples=100",
    "logger=csv",
]


@pytest.fixture(scope="module")
def trained_feature_ckpt(tmp_path_factory) -> str:
    """One feature classifier for the tests of this file (recipe=gan trains it when none is given)."""
    run_dir = tmp_path_factory.mktemp("gan") / "run"
    results = train_ok(run_dir, *TINY, "trainer.max_epochs=1", "prerequisites.feature.trainer.max_epochs=2")
    assert set(results["metrics"]) >= {"test/fd", "test/fd_real", "test/class_coverage"}
    return str(run_dir / "feature" / json.loads((run_dir / "feature" / "results.json").read_text())["checkpoint"])


@pytest.mark.slow  # three entry points and a pruned export: ~25 s on a quiet 2-core machine
def test_gan_run_exports_pruned_generator_and_evaluate_and_generate_reproduce(trained_feature_ckpt, run_dir, tmp_path):
    results = train_ok(
        run_dir,
        *TINY,
        f"task.feature_ckpt={trained_feature_ckpt}",
        "task.conditional=true",
        "compress=[prune]",
        "compress.prune.start_epoch=0",
        "compress.prune.end_epoch=1",
        "compress.prune.sparsity=0.5",
        "export=onnx",
    )
    metrics = results["metrics"]
    assert set(metrics) == {"test/fd", "test/fd_real", "test/class_coverage", "test/cond_acc"}
    assert metrics["test/fd"] > metrics["test/fd_real"] > 0
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "epoch0000.png",
        "epoch0001.png",
        "epoch0002.png",
    ]
    assert (run_dir / "samples.png").is_file() and (run_dir / results["export"]["onnx"]).is_file()
    ckpt = torch.load(run_dir / results["checkpoint"], weights_only=True)
    weights = [
        v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("net.generator.")
        and k.endswith("weight_orig")
        or k.startswith("net.generator.")
        and k.endswith(".weight")
        and v.dim() > 1
    ]
    assert weights and not any(k.startswith("net.discriminator.") and "_mask" in k for k in ckpt["state_dict"])

    evaluated = run_module("recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1]) == pytest.approx(metrics, rel=1e-5)

    out = tmp_path / "threes.png"
    made = run_module(
        "recipes.generate", f"ckpt_path={run_dir / results['checkpoint']}", "num_samples=20", "label=3", f"out={out}"
    )
    assert made.returncode == 0 and out.is_file() and out.stat().st_size > 100, made.stderr[-2000:]
    refused = run_module("recipes.generate", f"ckpt_path={trained_feature_ckpt}", f"out={tmp_path / 'x.png'}")
    assert refused.returncode == 2 and "not a GAN" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("conditional, scale", [("false", 0.5), ("true", 1.0)])
def test_recipe_discriminator_lr_scale_follows_conditional(tmp_path, conditional, scale):
    """recipe=gan's task.d_lr_scale is the value measured best for each mode; an override wins."""
    assert compose_train(tmp_path, "recipe=gan", f"task.conditional={conditional}").task.d_lr_scale == scale
    assert (
        compose_train(tmp_path, "recipe=gan", f"task.conditional={conditional}", "task.d_lr_scale=2").task.d_lr_scale
        == 2
    )


@pytest.mark.slow  # three DCGAN runs: ~15-20 s on a quiet 2-core machine
def test_resume_continues_both_optimizers_exactly(trained_feature_ckpt, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*TINY, f"task.feature_ckpt={trained_feature_ckpt}", "model=dcgan"]
    train_ok(straight, *common)
    train_ok(resumed, *common, "trainer.max_epochs=2")
    train_ok(resumed, *common, "ckpt_path=last")
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3 * 5 * 2  # 5 D steps and 5 G steps per epoch
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(a["optimizer_states"]) == 2
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for pa, pb in zip(sa["state"].values(), sb["state"].values()):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow  # a 2-rank run plus the shared feature classifier: ~20 s on a quiet 2-core machine
def test_ddp_replicas_hold_equal_weights(trained_feature_ckpt, run_dir):
    probe = run_dir.parent / "probe"
    tiny = [o for o in TINY if "limit_train_batches" not in o]
    train_ok(
        run_dir,
        *tiny,
        f"task.feature_ckpt={trained_feature_ckpt}",
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe",
        f"+callbacks.probe.out_dir={probe}",
    )
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == [2, 4, 6]  # one D and one G step per batch
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert not torch.equal(ranks[0]["params"][0], ranks[0]["params"][-1])


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.d_steps=0", "task.d_steps=0 must be >= 1"),
        ("strategy=async", "strategy=async cannot train GanModule"),
    ],
)
def test_bad_gan_input_is_one_line_and_leaves_no_run_dir(override, message, run_dir):
    """Refused at start-up, before the feature classifier (a prerequisite) would train."""
    proc = train_in_process(run_dir, "recipe=gan", override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert not run_dir.exists()


def test_svd_factors_the_generator_and_leaves_the_discriminator(feature_ckpt, tmp_path):
    """compress=[svd] on recipe=gan: the plan is checked before the feature classifier would train (an
    untrained stand-in of its shape takes its place), then the generator, the shipped net, is factored."""
    run_dir = tmp_path / "run"
    cfg = compose_train(
        run_dir,
        *TINY,
        "compress=[svd]",
        "compress.svd.epoch=1",
        "trainer.max_epochs=2",
        "task.fd_samples=50",
        "task.val_samples=50",
    )
    check_buildable(cfg)  # task.feature_ckpt unset: the prerequisite is still to train
    assert not run_dir.exists()
    cfg.task.feature_ckpt = feature_ckpt
    results = recipes.train.run(cfg, dict(HydraConfig.get().runtime.choices))
    compression = results["compression"]
    assert compression["steps"] == ["svd"] and compression["params"] < compression["dense_params"]
    assert set(compression["per_step"][0]) == {"step", "fd_before", "fd_after"}
    state = torch.load(run_dir / results["checkpoint"], weights_only=True)["state_dict"]
    # MLP generator body: Linear 0 and 2 factored into (n->k, k->m) pairs; the output layer 4 kept
    assert {
        "net.generator.body.0.0.weight",
        "net.generator.body.0.1.weight",
        "net.generator.body.2.0.weight",
        "net.generator.body.4.weight",
    } <= set(state)
    assert {"net.discriminator.body.0.weight", "net.discriminator.body.2.weight"} <= set(state)
    assert not any(k.startswith("net.discriminator.body.0.0.") for k in state)
    assert state["net.generator.body.0.0.weight"].shape[0] < 32  # the rank: below the 32 latent inputs


def test_conditional_on_one_class_is_refused_before_the_feature_classifier_trains(tmp_path):
    root = write_image_folder(tmp_path / "images", layout="single", classes=("only",), per_class=10, size=8, mode="L")
    run_dir = tmp_path / "run"
    cfg = compose_train(
        run_dir,
        "recipe=gan",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=8",
        "data.channels=1",
        "data.num_workers=0",
        "task.conditional=true",
    )
    with pytest.raises(
        RecipeError,
        match="task.conditional=true needs labelled data with at least 2 classes, but "
        "the data gives 1; set task.conditional=false",
    ):
        recipes.train.train(cfg)
    assert not run_dir.exists()
