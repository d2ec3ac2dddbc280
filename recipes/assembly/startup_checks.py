"""Start-up checks of the whole plan of a run, before any model (a prerequisite included) trains: the
values Lightning or torch would only reject mid-run (or accept and do nothing with), and the
combinations a strategy refuses. Each check reads the config and class declarations only; nothing is
built here. (A compression plan and the values only the data can judge need the built task:
recipes.assembly.prerequisites.check_buildable checks them before a prerequisite trains.)"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_object
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value
from lightning.pytorch.accelerators import AcceleratorRegistry
from omegaconf import DictConfig, OmegaConf

from callbacks.step import CompressionStep
from modules.attacks import Attack
from modules.task import MODES, Task
from recipes.assembly.prerequisites import pending_configs
from recipes.assembly.thread_count import check_threads
from recipes.assembly.tracker_check import check_tracking_server
from recipes.assembly.trainer_checks import check_trainer_values
from recipes.errors import RecipeError
from recipes.strategies.contract import recipe_strategy

__all__ = [
    "accelerator_available",
    "check_accelerator",
    "check_attack",
    "check_budget",
    "check_monitor",
    "check_seed",
    "check_startup",
    "check_strategy",
    "check_task_arguments",
    "starts_from_weights",
    "step_class",
]


def check_seed(seed: Any) -> None:
    """Lightning seeds numpy too, which takes only unsigned 32-bit seeds."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not min_seed_value <= seed <= max_seed_value:
        raise RecipeError(f"seed={seed} must be an integer from {min_seed_value} to {max_seed_value}, e.g. seed=0")


def starts_from_weights(cfg: DictConfig) -> bool:
    """Whether the net begins from a checkpoint (a resume, or a reference model the task loads), so that
    a run that trains nothing still tests a trained net (e.g. the source model before fine-tuning)."""
    task = cfg.get("task") or {}
    references = [str(k)[: -len("_ckpt")] for k in task if str(k).endswith("_ckpt")]
    return bool(cfg.get("ckpt_path")) or any(
        task[f"{name}_ckpt"] or name in (cfg.get("prerequisites") or {}) for name in references
    )


def check_budget(cfg: DictConfig) -> None:
    """trainer.max_epochs / max_steps: -1 is "no limit", below that Lightning raises mid-build, and 0
    trains nothing, which would then test and ship an untrained net as if it were a result; so does
    trainer.limit_train_batches=0 (0 batches an epoch)."""
    trainer = cfg.trainer
    for key, unlimited in (("max_epochs", "-1 (no limit, with trainer.max_steps)"), ("max_steps", "-1 (no limit)")):
        value = trainer.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            continue  # null: Lightning's default; other types: the signature check names them
        if value < -1:
            raise RecipeError(
                f"trainer.{key}={value} must be a positive count or {unlimited}, "
                f"e.g. trainer.{key}={20 if key == 'max_epochs' else -1}"
            )
        if value == 0:
            _refuse_training_nothing(cfg, key, 0, f"trainer.{key}>=1")
    batches = trainer.get("limit_train_batches")  # null: all; a float: a fraction; an int: a count
    if not isinstance(batches, bool) and isinstance(batches, (int, float)) and batches == 0:
        _refuse_training_nothing(cfg, "limit_train_batches", batches, "trainer.limit_train_batches=null (all)")


def _refuse_training_nothing(cfg: DictConfig, key: str, value: Any, fix: str) -> None:
    """A budget of zero trains nothing: refused unless the net starts from weights or it is a smoke test."""
    if not cfg.trainer.get("fast_dev_run") and not starts_from_weights(cfg):
        raise RecipeError(
            f"trainer.{key}={value} trains nothing, so the run would test and ship an untrained net: "
            f"give {fix}, or start from weights (task.init_ckpt=PATH or ckpt_path=PATH)"
        )


def accelerator_available(name: str) -> bool:
    """What Lightning's accelerator connector would find: "gpu" is CUDA or MPS; "auto" always works."""
    if name == "auto":
        return True
    names = ("cuda", "mps") if name == "gpu" else (name,)
    registered = [n for n in names if n in AcceleratorRegistry]
    if not registered:
        return True  # an accelerator this check does not know: Lightning's own error names it
    return any(AcceleratorRegistry[n]["accelerator"].is_available() for n in registered)


def check_accelerator(cfg: DictConfig) -> None:
    accelerator = cfg.trainer.get("accelerator", "auto")
    if isinstance(accelerator, str) and not accelerator_available(accelerator):
        raise RecipeError(
            f"trainer.accelerator={accelerator} but this machine has no {accelerator} device that "
            f"torch can use: run with trainer=cpu (or trainer.accelerator=auto)"
        )


def step_class(node: Any) -> type[CompressionStep] | None:
    """The CompressionStep class a `compress.<name>` node names (None: not one)."""
    target = get_object(node._target_) if node and "_target_" in node else None
    return target if isinstance(target, type) and issubclass(target, CompressionStep) else None


def check_strategy(cfg: DictConfig, choices: dict[str, Any]) -> None:
    """The strategy class's declarations (recipes.strategies.contract.RecipeStrategy) against the task and
    the compression steps: `check_task(task_class)`, `restructurable` and `splits_net`. A strategy that
    does not declare the contract (Lightning's own, e.g. strategy=single's `auto`) has its defaults."""
    target = cfg.strategy.get("_target_") if "strategy" in cfg else None
    if not target:
        return
    strategy = recipe_strategy(get_object(target))
    task_target = (cfg.get("task") or {}).get("_target_")
    if task_target:
        try:
            strategy.check_task(get_object(task_target))
        except ValueError as err:
            raise RecipeError(str(err)) from None
    steps = {name: step_class(node) for name, node in (cfg.get("compress") or {}).items()}
    reshaping = [name for name, cls in steps.items() if cls is not None and cls.changes_shapes]
    if reshaping and not strategy.restructurable:
        raise RecipeError(
            f"compress={','.join(reshaping)} changes layer shapes during training, which "
            f"strategy={choices.get('strategy')} cannot follow; use strategy=ddp or single"
        )
    coupled = next(((name, cls) for name, cls in steps.items() if cls is not None and cls.couples_layers), None)
    if coupled and strategy.splits_net:
        raise RecipeError(
            f"compress={coupled[0]} {coupled[1].couples_layers}: strategy={choices.get('strategy')} runs "
            "each block of the net on a different rank; use strategy=ddp or single"
        )


def check_monitor(cfg: DictConfig) -> None:
    """task.monitor_mode, which the task and the best-checkpoint callback read, before a prerequisite
    trains (the task itself refuses it too, but only once the run's own build starts); task.monitor
    against the metrics the task declares it logs (Task.monitorable_metric_names)."""
    task = cfg.get("task") or {}
    mode, monitor = task.get("monitor_mode"), task.get("monitor")
    if mode is not None and mode not in MODES:
        raise RecipeError(
            f"task.monitor_mode={mode} must be min or max (the direction in which task.monitor={monitor} improves)"
        )
    cls = get_object(task["_target_"]) if task.get("_target_") else None
    if not (isinstance(cls, type) and issubclass(cls, Task)) or monitor is None:
        return
    logged = cls.monitorable_metric_names()
    if logged is not None and monitor not in logged:
        raise RecipeError(
            f"task.monitor={monitor} is not a metric {cls.__name__} logs: choose one of "
            f"{', '.join(logged)} (and task.monitor_mode=min|max)"
        )


def check_task_arguments(cfg: DictConfig) -> None:
    """The task class's own checks of its plain-valued arguments (Task.check_arguments), so a bad value
    is refused before a prerequisite (a teacher, a feature classifier) trains, not after."""
    task = cfg.get("task")
    target = task.get("_target_") if task is not None else None
    if not target:
        return
    cls = get_object(target)  # the user's own config names it: instantiating it is the point of the run
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        return  # build_task refuses a class that is not a Task, with its own message
    plain = OmegaConf.to_container(task, resolve=True)
    arguments = {k: v for k, v in plain.items() if not k.startswith("_") and not isinstance(v, (dict, list))}
    try:
        cls.check_arguments(arguments)
    except (ValueError, TypeError) as err:
        raise RecipeError(str(err)) from None


def check_attack(cfg: DictConfig, choices: dict[str, Any]) -> None:
    """`attack=...` (results.json's robustness section): its values (Attack.check_arguments) and a task
    that declares an image classifier (Task.classifies_images), before anything trains."""
    attack = cfg.get("attack")
    if not attack:
        return
    cls = get_object(attack._target_)
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise RecipeError(f"attack._target_={attack._target_} is not a modules.attacks.Attack")
    plain = OmegaConf.to_container(attack, resolve=True)
    try:
        cls.check_arguments({k: v for k, v in plain.items() if not k.startswith("_") and not isinstance(v, dict)})
    except (ValueError, TypeError) as err:
        raise RecipeError(str(err)) from None
    task = get_object(cfg.task._target_)
    if not (isinstance(task, type) and issubclass(task, Task) and task.classifies_images):
        raise RecipeError(
            f"attack={choices.get('attack')} needs a task that classifies images, but task="
            f"{choices.get('task')} ({cfg.task._target_}) does not: drop attack, or use a classifier "
            "recipe"
        )


def check_startup(cfg: DictConfig, choices: dict[str, Any]) -> None:
    """Every start-up check of the run's own config, cheapest first, and the strategy's declarations
    against each prerequisite model it would train first (the only place a run's strategy is checked:
    the builds that follow, recipes.assembly.training's, do not check it again)."""
    check_seed(cfg.get("seed"))
    check_threads(cfg.get("threads", "auto"))
    check_budget(cfg)
    check_trainer_values(cfg)
    check_accelerator(cfg)
    check_strategy(cfg, choices)
    for name, (prerequisite, its_choices) in pending_configs(cfg, choices).items():
        try:
            check_strategy(prerequisite, its_choices)
        except RecipeError as err:
            raise RecipeError(f"prerequisites.{name} (the {name} model, trained first): {err}") from None
    check_monitor(cfg)
    check_task_arguments(cfg)
    check_attack(cfg, choices)
    check_tracking_server(cfg)  # last: the one check that waits on the network
