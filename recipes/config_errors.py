"""A misspelt override key (`trainer.max_epoch=3`) as one line with the near name, exit 2.

Hydra reports a key that is not in the config as a multi-line composition error and exits 1, from
inside `run_and_report`, which wraps composition and the run alike and offers no hook. Composing the
config a second time just to check keys would add start-up time to every run, so instead the one
reporter Hydra calls is wrapped: every other error goes to Hydra's own report unchanged. A RecipeError
or RunStopped that a sweeper raises (outside any job, so outside recipes.cli.guarded) gets the same one
line and exit status as one raised in a run.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from recipes.errors import RecipeError, RunStopped


def unknown_key_message(err: BaseException) -> str | None:
    """The one line for an override of a key the config does not have, else None."""
    cause = err.__cause__
    if not isinstance(err, ConfigCompositionException) or not isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return None
    key, full_key, parent = str(cause.key), str(cause.full_key), cause.parent_node
    if not full_key.endswith(key) or parent is None or not hasattr(parent, "keys"):
        return None
    prefix = full_key[: -len(key)]
    near = difflib.get_close_matches(key, [str(k) for k in parent.keys()], n=1)
    hint = f"did you mean {prefix}{near[0]}?" if near else f"valid keys: {', '.join(sorted(map(str, parent.keys())))}"
    append = re.search(r"use (\+\S+)", str(err))
    add = f" (to add a new key: {append.group(1)})" if append else ""
    return f"{full_key} is not a config key: {hint}{add}"


def one_line_unknown_keys(report: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Wrap Hydra's `run_and_report(func)` so an unknown-key override (or a sweeper's RecipeError) exits 2
    with one line."""

    def run(func: Callable[[], Any]) -> Any:
        def checked() -> Any:
            try:
                return func()
            except ConfigCompositionException as err:
                line = unknown_key_message(err)
                if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                from recipes.cli import EXIT_BAD_INPUT

                print(f"error: {line}", file=sys.stderr)
                sys.exit(EXIT_BAD_INPUT)  # SystemExit is no Exception: Hydra's report lets it through
            except (RecipeError, RunStopped) as err:  # raised outside a job: by a sweeper (recipes/sweeper.py)
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                from recipes.cli import EXIT_BAD_INPUT

                print(f"error: {err}", file=sys.stderr)
                sys.exit(err.exit_code if isinstance(err, RunStopped) else EXIT_BAD_INPUT)

        return report(checked)

    run.__wrapped__ = report  # type: ignore[attr-defined]
    return run


def install() -> None:
    """Wrap the reporter `hydra.main` uses (once per process)."""
    from hydra._internal import utils

    if not hasattr(utils.run_and_report, "__wrapped__"):
        utils.run_and_report = one_line_unknown_keys(utils.run_and_report)
