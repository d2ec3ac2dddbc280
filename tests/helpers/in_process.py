"""Run an entry point's console-script body (e.g. recipes.train.main) as `python -m MODULE ARGS...` would,
but in the test process: the same pre-flight, Hydra run and error guard, without paying ~5 s of
`import torch, lightning` for a fresh interpreter. Whatever the run changes in the process is put back."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from tests.helpers import REPO

# Loggers whose handlers a run changes: Hydra's job logging sets the root's, recipes.runtime.guard gives Lightning's
# the root's file handler (train.log); `lightning` has its own console handler.
_RUN_LOGGERS = ("", "lightning", "lightning.pytorch", "lightning.fabric")


@contextlib.contextmanager
def _process_state_kept(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """What a run changes in its process, put back afterwards so that the next test starts as it would
    after a subprocess: environment (Lightning's PL_GLOBAL_SEED...), cwd, logging handlers and levels,
    the SIGTERM and SIGINT handlers, the random generators (the run seeds them), torch's deterministic mode, Hydra's
    global state and its reporter (recipes.runtime.overrides wraps it). Output written to sys.stdout and
    sys.stderr or through Lightning's own console handler goes to `out` and `err`."""
    from hydra._internal import utils as hydra_utils
    from hydra.core.global_hydra import GlobalHydra

    environ = dict(os.environ)
    cwd = os.getcwd()
    loggers = {name: logging.getLogger(name) for name in _RUN_LOGGERS}
    handlers = {name: list(logger.handlers) for name, logger in loggers.items()}
    levels = {name: logger.level for name, logger in loggers.items()}
    consoles = {h: h.stream for name in _RUN_LOGGERS[1:] for h in handlers[name] if type(h) is logging.StreamHandler}
    sigterm, sigint = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    generators = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    reporter = hydra_utils.run_and_report
    for handler in consoles:
        handler.setStream(err)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for handler, stream in consoles.items():
            handler.setStream(stream)
        for name, logger in loggers.items():
            for handler in logger.handlers:
                if handler not in handlers[name]:
                    handler.close()  # the run's train.log
            logger.handlers[:] = handlers[name]
            logger.setLevel(levels[name])
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        signal.signal(signal.SIGTERM, sigterm)
        signal.signal(signal.SIGINT, sigint)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        hydra_utils.run_and_report = reporter
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()


def run_module_in_process(
    module: str, *overrides: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE OVERRIDES...` through the same console-script body (MODULE.main: pre-flight,
    Hydra, the error guard), in this process; returns what run_module would: exit status and text
    output. An exception that escapes `main` is exit status 1 with its traceback on stderr, as the
    interpreter would report it."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    argv = [module, *overrides]
    with _process_state_kept(out, err):
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.update(env or {})
        os.chdir(cwd)
        try:
            with mock.patch.object(sys, "argv", argv):
                main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - reported as the interpreter would, exit status 1
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
