"""Every recipe composes with Hydra and builds into a datamodule, a module and a trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from recipes.assembly.acceleration import model_options
from recipes.assembly.instantiation import instantiate_part
from recipes.assembly.training import build_training
from recipes.runtime.overrides import group_options
from tests.helpers.build import GENOTYPE, compose_train

RECIPES = group_options("recipe")
GAN_MODELS = ("gan_mlp", "dcgan")  # generator + discriminator pairs: built with task=gan
SEQUENCE_MODELS = ("lstm", "transformer")  # read sequences: built on images read row by row


def reference_overrides(recipe: str, feature_ckpt: str, tmp_path: Path) -> list[str]:
    """What a recipe needs to be built without its prerequisite trained first, or its data given."""
    if recipe == "gan":
        return [f"task.feature_ckpt={feature_ckpt}"]
    if recipe in ("darts", "darts_retrain"):  # the genotype a search derives (recipe=darts: before it runs)
        return [f"model.genotype={GENOTYPE}"]
    if recipe == "lm_finetune":  # the user's text file (the starting checkpoint is checked at start-up)
        text = tmp_path / "corpus.txt"
        text.write_text("The quick brown fox jumps over the lazy dog.\n" * 100, encoding="utf-8")
        return [f"data.path={text}"]
    return []


def test_recipes_exist() -> None:
    assert "baseline" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_builds(recipe: str, tmp_path: Path, feature_ckpt: str) -> None:
    cfg = compose_train(tmp_path, f"recipe={recipe}", *reference_overrides(recipe, feature_ckpt, tmp_path))
    assert cfg.task_name == recipe
    parts = build_training(cfg, dict(HydraConfig.get().runtime.choices))
    assert parts.module.net.num_classes == parts.datamodule.num_classes
    assert parts.trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("model", group_options("model"))
@pytest.mark.parametrize("size", [None, 32])
def test_every_model_fits_the_data_shape(model: str, size: int | None, tmp_path: Path) -> None:
    """Input shape and class count flow from the datamodule into every net: no config repeats them."""
    task = ["task=gan"] if model in GAN_MODELS else []  # a GAN pair reads its latent size from the task
    rows = model in SEQUENCE_MODELS
    cfg = compose_train(
        tmp_path,
        f"model={model}",
        f"data.image_size={size if size else 'null'}",
        "data.channels=3",
        f"data.as_sequence={str(rows).lower()}",
        *task,
        *([f"model.genotype={GENOTYPE}"] if model == "darts" else []),
    )
    if task:
        datamodule = instantiate_part(cfg.data, "data")
        model, _ = model_options(cfg.model)  # the net's own keys, without model.compile / channels_last
        net = instantiate_part(
            model, "model", input_shape=list(datamodule.input_shape), num_classes=datamodule.num_classes
        )
    else:
        net = build_training(cfg, {}).module.net
    side = size or 8
    assert net.input_shape == ((side, 3 * side) if rows else (3, side, side))


def test_documented_overrides_compose(tmp_path: Path) -> None:
    """The override names the README promises (a public contract) all compose."""
    cfg = compose_train(
        tmp_path,
        "recipe=baseline",
        "data=mnist",
        "data.root=/x",
        "data.download=false",
        "data.batch_size=7",
        "data.shuffle=false",
        "model=mlp",
        "model.hidden=[30,20]",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "seed=5",
        "ckpt_path=last",
    )
    assert (cfg.data.batch_size, cfg.data.shuffle, list(cfg.model.hidden), cfg.seed) == (7, False, [30, 20], 5)
    for trainer in group_options("trainer"):
        assert compose_train(tmp_path, f"trainer={trainer}").trainer._target_ == "lightning.pytorch.Trainer"
    assert compose_train(tmp_path, "trainer=ddp_sim").strategy._target_.endswith("DDPStrategy")
    for data in ("digits", "mnist", "fashion_mnist", "cifar10", "imagefolder"):
        assert compose_train(tmp_path, f"data={data}").data._target_
