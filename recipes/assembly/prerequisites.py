"""Recipes that need an earlier model (a distillation teacher, an adaptation source, a fine-tuning
start) take its checkpoint as `task.<name>_ckpt`. When that is unset, the recipe's
`prerequisites.<name>` config describes the model, and it is trained first in `<run dir>/<name>/`
by the same code path as any run, and reused if a finished one is already there.

A prerequisite may instead deliver values of its results.json into the run's config
(`prerequisites.<name>.deliver`: a list of `{key, result, stand_in}`, e.g. a DARTS search's
`darts.genotype` into `model.genotype`): it is pending while any of those keys is unset, and
`stand_in` is the value the start-up checks build the run with before it has trained."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from recipes.assembly.tasks import DataShape, build_datamodule, build_task
from recipes.assembly.training import build_compression
from recipes.errors import RecipeError

__all__ = [
    "DELIVER",
    "Built",
    "DEFAULT_TASK",
    "check_buildable",
    "default_task",
    "ensure_prerequisites",
    "pending_configs",
    "pending_prerequisites",
    "prerequisite_choices",
    "prerequisite_config",
]

# Keys that replace the run's node (they are group choices); all others merge into it.
_REPLACED = ("model", "task", "data")
# The task (conf/task/ option) a prerequisite model is trained with when its config names none.
DEFAULT_TASK = "classifier"
# The key of a prerequisite's spec that lists the values it delivers (not a key of its own config).
DELIVER = "deliver"


def deliveries(cfg: DictConfig, name: str) -> list[DictConfig]:
    """`prerequisites.<name>.deliver`: the run's config keys filled from the prerequisite's results."""
    return list(cfg.prerequisites[name].get(DELIVER) or [])


def _pending(cfg: DictConfig, name: str) -> bool:
    """Whether prerequisite `name` has yet to train: a delivered key or its `task.<name>_ckpt` is unset."""
    if deliveries(cfg, name):
        return any(OmegaConf.select(cfg, item.key) in (None, "") for item in deliveries(cfg, name))
    return not (cfg.get("task") or {}).get(f"{name}_ckpt")


def _result(results: dict[str, Any], dotted: str, name: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise RecipeError(f"prerequisites.{name}.deliver: the {name} run's results.json has no {dotted}")
        value = value[part]
    return value


def default_task() -> DictConfig:
    """conf/task/<DEFAULT_TASK>.yaml, for a prerequisite config without a task of its own."""
    return OmegaConf.load(str(resources.files("conf").joinpath("task", f"{DEFAULT_TASK}.yaml")))


def prerequisite_choices(choices: dict[str, Any], name: str) -> dict[str, Any]:
    """The group choices of prerequisite `name`: Hydra records those its config made as
    `<group>@prerequisites.<name>.<group>` (e.g. its task and model); the run's own choices otherwise."""
    marker = f"@prerequisites.{name}."
    own = {key.partition("@")[0]: value for key, value in choices.items() if marker in key}
    return {**choices, **own, "recipe": f"{choices.get('recipe')}/{name}", "task": own.get("task", DEFAULT_TASK)}


def prerequisite_config(cfg: DictConfig, name: str, run_dir: Path | None) -> DictConfig:
    """The run's config with `prerequisites.<name>` applied, writing into `run_dir` (None: a config to
    check, not to train, whose paths stay the run's own, unresolved)."""
    spec = cfg.prerequisites[name]
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        del sub["prerequisites"]
        for key in spec:
            if key == DELIVER:
                continue
            try:
                node = copy.deepcopy(spec[key])  # interpolations such as ${data.source} resolve in cfg first
            except OmegaConfBaseException as err:
                raise RecipeError(
                    f"prerequisites.{name}.{key} cannot be built with this config ({err}); "
                    f"pass task.{name}_ckpt=PATH of a trained model instead"
                ) from None
            sub[key] = node if key in _REPLACED or key not in sub else OmegaConf.merge(sub[key], node)
        if "task" not in spec:
            sub.task = default_task()
        if run_dir is not None:
            sub.paths.run_dir = str(run_dir)
        sub.ckpt_path = None
    return sub


def _wait_for(results_file: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not results_file.is_file():
        if time.monotonic() > deadline:
            raise RecipeError(f"rank 0 did not write {results_file} within {timeout_s:.0f} s")
        time.sleep(0.5)
    return json.loads(results_file.read_text())


def ensure_prerequisites(
    cfg: DictConfig,
    run_dir: Path,
    choices: dict[str, Any],
    run: Callable[..., dict[str, Any] | None],
    datamodules: dict[str, pl.LightningDataModule] | None = None,
) -> None:
    """Fill every unset `task.<name>_ckpt` that has a `prerequisites.<name>` (or every unset key its
    `deliver` lists, from its results.json) by training that model
    with `run` (recipes.train's pipeline, passed in so this module stays below it), then drop
    `prerequisites` from `cfg` (it may point at config, e.g. ${data.source}, that a user's overrides
    removed, which only matters when the model still has to be trained). `datamodules`: those
    check_buildable built already, by prerequisite name, passed on to `run`."""
    for name in cfg.get("prerequisites") or {}:
        key = f"{name}_ckpt"
        delivered = deliveries(cfg, name)
        if not delivered and key not in cfg.task:
            raise RecipeError(f"prerequisites.{name} needs task.{key}, which task={choices.get('task')} does not have")
        if not _pending(cfg, name):
            continue
        sub_dir = run_dir / name
        done = sub_dir / "results.json"
        what = ", ".join(item.key for item in delivered) or f"task.{key}"
        if done.is_file():
            results = json.loads(done.read_text())
            rank_zero_info(
                f"{what} is not set: reusing the {name} model trained earlier in this run dir: "
                f"{sub_dir / results['checkpoint']}"
            )
        else:
            rank_zero_info(f"{what} is not set: training the {name} model first, in {sub_dir}")
            results = run(
                prerequisite_config(cfg, name, sub_dir),
                prerequisite_choices(choices, name),
                keep_weights=True,
                datamodule=(datamodules or {}).get(name),
            )
            if results is None:  # another DDP rank: rank 0 tests the model and writes results.json
                results = _wait_for(done)
        with open_dict(cfg):
            if not delivered:
                cfg.task[key] = str(sub_dir / results["checkpoint"])
            for item in delivered:
                OmegaConf.update(cfg, item.key, _result(results, item.result, name), force_add=True)
    if "prerequisites" in cfg:
        with open_dict(cfg):  # done with: the run's config records the checkpoints instead
            del cfg["prerequisites"]


def pending_prerequisites(cfg: DictConfig) -> list[str]:
    """The prerequisite models this run would train before its own fit."""
    return [name for name in cfg.get("prerequisites") or {} if _pending(cfg, name)]


def pending_configs(cfg: DictConfig, choices: dict[str, Any]) -> dict[str, tuple[DictConfig, dict[str, Any]]]:
    """The config and group choices of each prerequisite model this run would train, by name, for the
    start-up checks of the whole plan (their paths are the run's own: they are checked, not run)."""
    return {
        name: (prerequisite_config(cfg, name, None), prerequisite_choices(choices, name))
        for name in pending_prerequisites(cfg)
    }


@dataclass
class Built:
    """The data modules check_buildable built, handed on to the runs that train with them, so each is
    built once: the run's own, and each pending prerequisite's by name."""

    datamodule: pl.LightningDataModule | None = None
    prerequisites: dict[str, pl.LightningDataModule] = field(default_factory=dict)


def check_buildable(cfg: DictConfig) -> Built:
    """Build the run's task now (data, model, task, compression plan), with untrained stand-ins of the
    same shape for the reference nets that prerequisites would train, when a prerequisite would
    otherwise train before the run's own build finds a value wrong: a value only the data can judge
    (e.g. task.conditional=true on data with one class) or a compression plan that does not fit the
    shipped net. Without a pending prerequisite the run's own build comes first and refuses them.

    The data modules built here are returned for the real builds. The task is not: it is built again
    once the prerequisites trained, since building it reads the reference nets' weights (e.g. an
    adaptation starts from the source model's), and the compression plan's dry run needs real weights."""
    pending = pending_prerequisites(cfg)
    if not pending:
        return Built()
    run_dir = Path(cfg.paths.run_dir)
    built, stand_ins = Built(build_datamodule(cfg)), {}
    checked = copy.deepcopy(cfg)  # the run's config with the stand-ins of the values a prerequisite delivers
    for name in pending:
        sub = prerequisite_config(cfg, name, run_dir / name)
        built.prerequisites[name] = build_datamodule(sub)
        net = build_task(sub, DataShape.of(built.prerequisites[name]), references={}).shipped_net
        if deliveries(cfg, name):
            with open_dict(checked):
                for item in deliveries(cfg, name):
                    OmegaConf.update(checked, item.key, item.stand_in, force_add=True)
        else:
            stand_ins[name] = net
    module = build_task(checked, DataShape.of(built.datamodule), stand_ins)
    build_compression(checked, module.shipped_net)
    return built
