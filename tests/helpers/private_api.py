"""Every private attribute of Lightning or Hydra this project still uses, where, and why no public API
does the job: the one list to read before upgrading either. `tests/test_conventions.py` checks that
each one still exists on the real classes, so an upgrade that removes or renames one fails there, by
name, instead of deep inside a run (a missing `_setup_model` override target would silently stop
being called; a missing `_current_fx_name` would silently lose a speed-up).

Add an entry when new code needs a private name; remove it when a public API replaces the use.
Everything else (hooks, callbacks, strategies, loggers) goes through public Lightning API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivateUse:
    """One private name: `owner` (an importable `module:attribute.path`) must have `name`; with
    `instance`, an instance the test builds must (the attribute is set in `__init__`)."""

    owner: str
    name: str
    where: str  # the project files that use it
    why: str  # what the public API lacks
    instance: bool = False


USES: tuple[PrivateUse, ...] = (
    # --- the per-step fast path (modules/base.py) -------------------------------------------------------
    PrivateUse(
        "lightning.pytorch:LightningModule",
        "_current_fx_name",
        "modules/base.py",
        "Lightning sets it around every hook call (~45 sets per step); skipping nn.Module.__setattr__'s "
        "checks for it is worth several percent of a tiny step. No public way to make the set cheap.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch:Trainer",
        "_logger_connector",
        "modules/base.py",
        "train/loss is logged only on the steps Lightning forwards to the loggers; the rule (optimizer-"
        "stepping batches modulo log_every_n_steps, or stopping) is only exposed here.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector:_LoggerConnector",
        "should_update_logs",
        "modules/base.py",
        "see _logger_connector",
    ),
    # --- metrics.csv that survives a resume (recipes/assembly/loggers.py) ------------------------------------------
    PrivateUse(
        "lightning.pytorch.loggers.csv_logs:ExperimentWriter",
        "_check_log_dir_exists",
        "recipes/assembly/loggers.py",
        "the base writer warns about (and would clobber) an existing metrics.csv; a resumed run appends.",
    ),
    PrivateUse(
        "lightning.pytorch.loggers.csv_logs:ExperimentWriter",
        "_rewrite_with_new_header",
        "recipes/assembly/loggers.py",
        "the base rewrites metrics.csv in place when a column appears; a kill "
        "there would lose the history, so the override writes atomically.",
    ),
    PrivateUse(
        "lightning.pytorch.loggers:CSVLogger",
        "_experiment",
        "recipes/assembly/loggers.py",
        "CSVLogger.experiment caches its writer here; the override builds the appending writer instead "
        "(CSVLogger has no writer-class hook).",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.loggers:CSVLogger",
        "_fs",
        "recipes/assembly/loggers.py",
        "the logger's filesystem, to create the log dir as the base class does.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop",
        "_batches_that_stepped",
        "recipes/assembly/loggers.py",
        "the step metrics.csv rows are keyed by, read from a checkpoint's "
        "loops.fit_loop.epoch_loop.state_dict to drop rows a resume will write again.",
        instance=True,
    ),
    # --- strategies (recipes/strategies/) -----------------------------------------------------------------
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_configure_launcher",
        "recipes/strategies/async_sgd.py, pipeline.py",
        "where a strategy picks its launcher (async: one that shares the parameters first) and can check "
        "its settings before any process starts; no public hook runs then.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_start_method",
        "recipes/strategies/async_sgd.py",
        "the launch method the launcher is built with.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_setup_model",
        "recipes/strategies/ddp.py, async_sgd.py",
        "where DDP wraps the module: find_unused_parameters for self-stepping tasks, and no wrapper for "
        "Hogwild workers; configure_ddp would replace the whole setup.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_ddp_kwargs",
        "recipes/strategies/ddp.py",
        "DistributedDataParallel's keyword arguments, set per task at setup (not known at construction).",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_register_ddp_hooks",
        "recipes/strategies/ddp.py",
        "Lightning registers ddp_comm_hook on CUDA only; the override registers it on every device (and "
        "counts the bytes sent).",
    ),
    PrivateUse(
        "lightning.pytorch.overrides.distributed",
        "_register_ddp_comm_hook",
        "recipes/strategies/ddp.py",
        "the helper Lightning itself uses to register a comm hook (with its wrapper) on the DDP model.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_ddp_comm_hook",
        "recipes/strategies/ddp.py, model_avg.py",
        "the hook given to the strategy (post-local SGD's is made once the process group exists).",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_ddp_comm_state",
        "recipes/strategies/ddp.py, model_avg.py",
        "the hook's state (PostLocalSGDState needs the process group).",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_ddp_comm_wrapper",
        "recipes/strategies/ddp.py",
        "the hook wrapper (e.g. fp16 compression), passed on as Lightning does.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_enable_model_averaging",
        "recipes/strategies/model_avg.py",
        "where Lightning builds its PeriodicModelAverager; model_avg replaces it with one that also "
        "averages BatchNorm buffers and counts bytes.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_model_averager",
        "recipes/strategies/model_avg.py",
        "the averager Lightning calls after each optimizer step.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_model_averaging_period",
        "recipes/strategies/model_avg.py",
        "strategy.period, as Lightning stores it.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies:DDPStrategy",
        "_launcher",
        "recipes/strategies/async_sgd.py",
        "where _configure_launcher puts the launcher (the public `launcher` property only reads it).",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies.launchers",
        "_MultiProcessingLauncher",
        "recipes/strategies/hogwild_launcher.py",
        "the spawn/forkserver launcher, subclassed to share the parameters before the workers start.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies.launchers:_MultiProcessingLauncher",
        "_strategy",
        "recipes/strategies/hogwild_launcher.py",
        "the strategy whose parameters the subclass shares.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies.launchers:_MultiProcessingLauncher",
        "_start_method",
        "recipes/strategies/hogwild_launcher.py",
        "forkserver: the subclass preloads modules into the server.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.strategies.launchers:_MultiProcessingLauncher",
        "_wrapping_function",
        "recipes/strategies/hogwild_launcher.py",
        "the first code a worker runs: the subclass starts its watcher of the main process there, and turns "
        "SIGTERMException (a SystemExit with status 0, which would read as a finished worker) into exit 143.",
    ),
    PrivateUse(
        "torch.multiprocessing",
        "_prctl_pr_set_pdeathsig",
        "recipes/strategies/hogwild_launcher.py",
        "torch sets SIGINT as a worker's parent-death signal; a forkserver worker's parent is the fork server, "
        "whose death (SIGTERM to the process group) would interrupt the worker mid-batch. No public API.",
    ),
    PrivateUse(
        "lightning.pytorch.strategies.launchers",
        "_SubprocessScriptLauncher",
        "recipes/strategies/timeout.py",
        "the popen launcher, whose children a failing rank 0 kills (Lightning does only on Ctrl-C).",
    ),
    PrivateUse(
        "lightning.pytorch:Trainer",
        "_accelerator_connector",
        "recipes/strategies/async_sgd.py",
        "use_distributed_sampler is a Trainer argument; a strategy (async: every worker validates on the "
        "whole set) can only turn it off here.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop",
        "_num_ready_batches_reached",
        "recipes/strategies/async_counts.py",
        "whether the batch just trained was the epoch's last (a Hogwild worker then signals it is done).",
    ),
    PrivateUse(
        "lightning.fabric.utilities.optimizer",
        "_optimizer_to_device",
        "recipes/strategies/pipeline.py",
        "moves a restored optimizer's state to the device, as Lightning's own restore does.",
    ),
    # --- W&B without the settings it warns it ignores (recipes/stages/tracking.py) ----------------------------
    PrivateUse(
        "lightning.pytorch.loggers:WandbLogger",
        "_wandb_init",
        "recipes/stages/tracking.py",
        "the wandb.init arguments; Lightning always adds `anonymous` and `resume`, which W&B warns it ignores "
        "(offline), and takes no argument to leave them out.",
        instance=True,
    ),
    PrivateUse(
        "lightning.pytorch.loggers:WandbLogger",
        "_offline",
        "recipes/stages/tracking.py",
        "whether the run is offline (where `resume` is ignored); no public property.",
        instance=True,
    ),
    # --- Hydra (recipes/runtime/overrides.py) -----------------------------------------------------------------
    PrivateUse(
        "hydra._internal.utils",
        "run_and_report",
        "recipes/runtime/overrides.py",
        "the reporter hydra.main wraps composition in; a misspelt key becomes one line and exit 2 only by "
        "wrapping it (Hydra offers no hook, and composing twice would slow every start-up).",
    ),
)
