"""What every entry point shares: Hydra resolvers, a pre-flight check of group overrides, and the
guard that turns a RecipeError into one line on stderr, a non-zero exit and no half-written run dir."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recipes import config_errors
from recipes.created_dirs import remove_created
from recipes.cuda_check import drop_nvml_check_without_gpus
from recipes.errors import EXIT_SIGINT, EXIT_SIGTERM, RecipeError, RunStopped

EXIT_BAD_INPUT = 2


# Every variable a launcher sets for a process's place: global rank (torchrun, Lightning), rank within
# the node (Lightning's DDP children, torchrun), node rank (a hand launch across nodes, torchrun's group).
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def process_rank() -> int:
    """0 exactly for global rank 0 (and for a run that is not distributed), else a positive rank from the
    launcher's environment. Every variable counts: a node other than node 0 of a hand launch
    (NODE_RANK=1, no RANK) and a worker of node 0 (LOCAL_RANK=1) are both not rank 0."""
    for var in _RANK_VARIABLES:
        value = int(os.environ.get(var, "0") or 0)
        if value:
            return value
    return 0


def _rank_zero_path(path: str) -> str:
    return path if process_rank() == 0 else os.devnull


def _rank_zero_only(value: Any) -> Any:
    return value if process_rank() == 0 else None


def _short_uuid(text: str) -> str:
    """A uuid (torchrun --standalone's fresh rendezvous id) cut to 8 hex digits; other ids unchanged."""
    try:
        return uuid.UUID(text).hex[:8]
    except ValueError:
        return text


def run_id() -> str:
    """A name for this launch that every rank computes alike, so all ranks of one job share one run dir.

    In an srun step (not an interactive `srun --pty bash`): slurm-JOB, or slurm-ARRAYJOB_TASK for an
    array task, with .STEP added for the job's second and later srun steps; a requeued job gets its dir
    back. Under torchrun: torchrun-RDZV_ID (--standalone and single-node runs get a fresh uuid, cut to
    8 hex digits; multi-node runs pass --rdzv-id=JOB). Otherwise the clock to the microsecond.
    Lightning's popen children get the resolved run dir on their command line and never call this."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        job = env["SLURM_JOB_ID"]
        if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        step = env["SLURM_STEP_ID"]
        return f"slurm-{job}" if step == "0" else f"slurm-{job}.{step}"
    rdzv = env.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv != "none":  # "none": torchrun's default for a static multi-node rendezvous, not an id
        return f"torchrun-{_short_uuid(rdzv)}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def launched_externally() -> bool:
    """True when srun or torchrun started one process per rank (Lightning then starts none itself)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


class _DropTips(logging.Filter):
    """Lightning advertises a cloud logger at every Trainer start; that line is noise in a recipe run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    """Silence Lightning's advertising and warnings that do not apply to recipe runs."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Steps are counted across epochs, so train/loss is logged even when an epoch is shorter than
    # log_every_n_steps (digits: 20 batches); Lightning's warning about that is misleading here.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def log_libraries_to_file() -> None:
    """Hydra's job logging sends the root logger to <run dir>/train.log, but Lightning's loggers keep
    their own console handler and do not propagate (Lightning imported before Hydra set up logging):
    give them the root's file handlers too, so train.log holds the run's log lines, console unchanged."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in files:
            if not logger.propagate and handler not in logger.handlers:
                logger.addHandler(handler)


def register_resolvers() -> None:
    """Resolvers used by conf/: ${rank_zero_path:P} is P on rank 0 and the null device elsewhere;
    ${rank_zero_only:V} is V on rank 0 and null elsewhere; ${run_id:} names the launch (see run_id),
    cached so that every use in one config, and every job of a sweep (Hydra copies the cache), agrees;
    ${checkpoint_filename:M} is the best checkpoint's file name template for the monitored metric M;
    ${if_else:C,A,B} is A when C is true, else B (recipe=gan's discriminator LR, by task.conditional)."""
    if not OmegaConf.has_resolver("rank_zero_path"):
        OmegaConf.register_new_resolver("rank_zero_path", _rank_zero_path)
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver("rank_zero_only", _rank_zero_only)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("checkpoint_filename"):
        OmegaConf.register_new_resolver("checkpoint_filename", checkpoint_filename)
    if not OmegaConf.has_resolver("if_else"):
        OmegaConf.register_new_resolver("if_else", lambda condition, then, otherwise: then if condition else otherwise)


def checkpoint_filename(monitor: str) -> str:
    """ModelCheckpoint's file name template for a monitored metric: `val/acc` gives
    `epoch{epoch:03d}-acc{val/acc:.4f}` (files such as epoch010-acc0.9722.ckpt, which users' scripts
    read), `val/fd` gives `epoch{epoch:03d}-fd{val/fd:.4f}`."""
    return f"epoch{{epoch:03d}}-{monitor.rpartition('/')[2]}{{{monitor}:.4f}}"


def group_options(group: str) -> list[str] | None:
    """The options of a config group (its YAML files), or None when `group` is not a group."""
    folder = resources.files("conf").joinpath(group)
    if not folder.is_dir():
        return None
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preflight(argv: list[str]) -> None:
    """Reject an unknown group option (`recipe=nope`) in one line, before Hydra prints a page about it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if "=" in a])
    except Exception:  # noqa: BLE001 - malformed overrides are Hydra's to report
        return
    for override in overrides:
        group = override.key_or_group
        if override.is_delete() or group.startswith("hydra") or override.package:
            continue
        options = group_options(group)
        if options is None:
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if isinstance(value, list):  # a list group such as compress=[a,b]
                bad = [v for v in value if str(v) not in options]
            else:
                bad = [] if value is None or str(value) in options else [value]
            if bad:
                raise RecipeError(
                    f"unknown {group} {bad[0]!r} in '{override.input_line}': choose one of {', '.join(options)}"
                )


# This process's parent when it started: for a DDP child that Lightning started, its launcher (rank 0).
PARENT_AT_START = os.getppid()


def _outlive_launcher(timeout_s: float = 60.0) -> None:
    """In a DDP child that Lightning started: wait (a while) for the launcher, rank 0, to exit first.
    Lightning's process observer SIGKILLs the launcher as soon as a child exits non-zero, which would
    cut off its message and turn its exit status into 137. The parent is the one recorded at start: one
    read now would be whoever adopted the child if the launcher had already died (kill -9), and the
    child would wait out the whole timeout for it."""
    if launched_externally():
        return
    deadline = time.monotonic() + timeout_s
    while os.getppid() == PARENT_AT_START and time.monotonic() < deadline:
        time.sleep(0.1)


def _sweep_dir() -> Path | None:
    """The sweep dir of a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def _remove_fresh(run_dir: str) -> None:
    """Remove what this run created: its run dir (or, in a folder that existed, the entries it added)
    and the parents made for it, and a sweep dir this sweep made that holds only Hydra's multirun.yaml."""
    remove_created(run_dir)
    sweep = _sweep_dir()
    if sweep is not None and sweep.is_dir() and all(p.name == "multirun.yaml" for p in sweep.iterdir()):
        remove_created(sweep)


class TrialFailed(Exception):
    """A trial of a search (recipes/sweeper.py) that failed or diverged: raised instead of exiting, so
    that Hydra records the job as failed, the sweeper tells Optuna and the sweep goes on."""


def in_search_trial() -> bool:
    """True in a job launched by the Optuna sweeper (hydra/sweeper=optuna, e.g. hparams_search=NAME)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return target.endswith("recipes_optuna_sweeper.OptunaSweeper")


def guarded(task: Callable[[Any], Any], cfg: Any, run_dir: str | None = None) -> Any:
    """Run `task(cfg)`; on RecipeError print one line, remove a run dir this run created, exit 2; on
    RunStopped (diverged, SIGTERM) print one line (rank 0) and exit with its code, keeping the run dir.
    In a search trial, both raise TrialFailed instead (the line printed alike), except a SIGTERM or a
    SIGINT, which stops the sweep as it stops a run."""
    quiet_libraries()  # again here: a submitit job calls the task function without run_main
    log_libraries_to_file()
    drop_nvml_check_without_gpus()  # after Lightning's import set it: see recipes/cuda_check.py
    try:
        return task(cfg)
    except RunStopped as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if process_rank() == 0:  # every rank stops alike; one line is enough
            print(f"error: {err}", file=sys.stderr)
        else:
            _outlive_launcher()
        if err.exit_code not in (EXIT_SIGTERM, EXIT_SIGINT) and in_search_trial():
            raise TrialFailed(str(err)) from None
        sys.exit(err.exit_code)
    except RecipeError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None and process_rank() == 0:
            _remove_fresh(run_dir)
        print(f"error: {err}", file=sys.stderr)
        if in_search_trial():
            raise TrialFailed(str(err)) from None
        sys.exit(EXIT_BAD_INPUT)


def run_main(hydra_main: Callable[[], Any]) -> None:
    """Console-script body: pre-flight the overrides, then hand over to the @hydra.main function."""
    register_resolvers()
    quiet_libraries()
    config_errors.install()  # a misspelt override key: one line with the near name, exit 2
    try:
        preflight(sys.argv[1:])
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    hydra_main()
