"""Overrides checked before Hydra reports them: an unknown group option (`recipe=nope`) and a misspelt
override key (`trainer.max_epoch=3`), each as one line with the choices or the near name, exit 2.

Hydra reports a key that is not in the config as a multi-line composition error and exits 1, from
inside `run_and_report`, which wraps composition and the run alike and offers no hook. Composing the
config a second time just to check keys would add start-up time to every run, so instead the one
reporter Hydra calls is wrapped: every other error goes to Hydra's own report unchanged. A RecipeError
or RunStopped that a sweeper raises (outside any job, so outside recipes.runtime.guard.guarded) gets the same one
line and exit status as one raised in a run.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from recipes.errors import EXIT_BAD_INPUT, RecipeError, RunStopped

__all__ = ["group_options", "install", "preflight", "unknown_key_message"]


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
                print(f"error: {line}", file=sys.stderr)
                sys.exit(EXIT_BAD_INPUT)  # SystemExit is no Exception: Hydra's report lets it through
            except (RecipeError, RunStopped) as err:  # raised outside a job: by a sweeper (recipes/sweep/sweeper.py)
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
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
