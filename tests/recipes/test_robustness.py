"""recipes.attack and `attack=...` on recipes.train: robustness.json / robustness.png / results.json's
robustness section from a checkpoint rebuilt from its saved config, and one-line refusals of bad
attack values, unknown attacks and checkpoints that are not classifiers, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from recipes.assembly.startup_checks import check_startup
from recipes.attack import attack
from recipes.errors import RecipeError
from tests.helpers.build import compose_train, write_untrained_checkpoint
from tests.helpers.runs import assert_clean_failure, run_module, train_ok


def compose_attack(*overrides: str):
    """The config `python -m recipes.attack OVERRIDES` runs with."""
    from recipes.runtime.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("robustness", overrides=list(overrides))


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory: pytest.TempPathFactory, feature_ckpt: str) -> str:
    """A recipes checkpoint of an (untrained) GAN, written as recipes.train writes one."""
    folder = tmp_path_factory.mktemp("gan")
    choices = {"recipe": "gan", "task": "gan", "model": "gan_mlp"}
    return write_untrained_checkpoint(folder / "gan.ckpt", choices, "recipe=gan", f"task.feature_ckpt={feature_ckpt}")


@pytest.mark.parametrize("name", ["pgd", "pgd_l2", "transfer"])
def test_attack_a_classifier_checkpoint_writes_json_and_plot(feature_ckpt: str, tmp_path: Path, name: str) -> None:
    extra = ["attack.rounds=2", "attack.substitute_epochs=2", "attack.seed_size=50"] if name == "transfer" else []
    cfg = compose_attack(
        f"ckpt_path={feature_ckpt}",
        f"attack={name}",
        "attack.max_samples=40",
        "attack.steps=3",
        f"out_dir={tmp_path}",
        *extra,
    )
    report = attack(cfg)
    written = json.loads((tmp_path / "robustness.json").read_text())
    assert written == report
    assert written["samples"] == 40 and 0 <= written["clean_acc"] <= 1
    eps = list(cfg.attack.eps)
    assert [row["eps"] for row in written["results"]] == eps and len(eps) == 3
    for row in written["results"]:
        assert row["attack"] == name and 0 <= row["robust_acc"] <= written["clean_acc"]
    assert (tmp_path / "robustness.png").stat().st_size > 1000


def test_attack_writes_into_the_checkpoints_run_dir_by_default(
    feature_ckpt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without out_dir: <run dir>/robustness/, not the working directory (a user running from the repo root)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(feature_ckpt, ckpt)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    attack(compose_attack(f"ckpt_path={ckpt}", "attack=fgsm", "attack.max_samples=8", "attack.eps=[0.1]"))
    assert sorted(p.name for p in (tmp_path / "run" / "robustness").iterdir()) == ["robustness.json", "robustness.png"]
    assert not any(cwd.iterdir())


@pytest.mark.parametrize(
    "override, message",
    [
        ("attack.eps=[-0.1]", "attack.eps=-0.1 must be in [0, 1]"),
        ("attack.eps=[0.1,1.5]", "attack.eps=1.5 must be in [0, 1]"),
        ("attack.steps=0", "attack.steps=0 must be an integer >= 1"),
    ],
)
def test_bad_attack_values_are_refused_before_anything_is_written(feature_ckpt, tmp_path, override, message) -> None:
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        attack(compose_attack(f"ckpt_path={feature_ckpt}", "attack=pgd", override, f"out_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out").exists()


def test_a_gan_checkpoint_is_refused_in_one_line(gan_ckpt: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="GanModule model, which does not classify images"):
        attack(compose_attack(f"ckpt_path={gan_ckpt}", f"out_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out").exists()


def test_unknown_attack_is_one_line_and_exit_2(feature_ckpt: str, tmp_path: Path) -> None:
    proc = run_module("recipes.attack", f"ckpt_path={feature_ckpt}", "attack=nope", f"out_dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert_clean_failure(proc, tmp_path / "out", "unknown attack 'nope'", "choose one of autoattack, fgsm")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack=pgd", "attack.eps=[2]"], "attack.eps=2 must be in [0, 1]"),
        (["attack=fgsm", "recipe=gan", "task.feature_ckpt=x.ckpt"], "needs a task that classifies images"),
    ],
)
def test_train_refuses_bad_attack_at_start_up(tmp_path: Path, overrides: list[str], message: str) -> None:
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_startup(cfg, {"attack": overrides[0].split("=")[1], "task": "gan"})


@pytest.mark.slow  # a training run and an attack through the CLI: ~20 s on a quiet 2-core machine
def test_train_with_attack_adds_the_robustness_section_and_recipes_attack_reproduces_it(run_dir, tmp_path) -> None:
    results = train_ok(run_dir, "trainer.max_epochs=3", "logger=csv", "attack=fgsm", "attack.max_samples=100")
    section = results["robustness"]
    assert section["samples"] == 100 and [r["eps"] for r in section["results"]] == [0.05, 0.1, 0.2]
    assert (run_dir / "robustness.png").is_file()
    proc = run_module(
        "recipes.attack",
        f"ckpt_path={run_dir / results['checkpoint']}",
        "attack=fgsm",
        "attack.max_samples=100",
        f"out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "robustness.json").read_text())
    assert [r["robust_acc"] for r in again["results"]] == pytest.approx([r["robust_acc"] for r in section["results"]])
    assert "robust acc" in proc.stdout and "success rate" in proc.stdout


@pytest.mark.slow  # AutoAttack's four attacks: ~30 s on a quiet 2-core machine
def test_autoattack_is_at_least_as_strong_as_pgd(feature_ckpt: str, tmp_path: Path) -> None:
    common = [f"ckpt_path={feature_ckpt}", "attack.max_samples=30", "attack.eps=[0.1]"]
    by_pgd = attack(compose_attack(*common, "attack=pgd", f"out_dir={tmp_path / 'pgd'}"))
    by_aa = attack(compose_attack(*common, "attack=autoattack", f"out_dir={tmp_path / 'aa'}"))
    assert by_aa["results"][0]["robust_acc"] <= by_pgd["results"][0]["robust_acc"]
