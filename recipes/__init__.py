"""The glue a user runs: the entry points at the top (train, evaluate, export, generate, attack,
summarize), and below them, in the order imports go: sweep, stages, assembly, strategies,
checkpointing, data, runtime, errors (docs/architecture.md).

Modules that moved keep working at their old import path, for the `_target_`s that checkpoints and
configs written before the move name (`recipes.loggers.HistoryCSVLogger`, ...): MOVED lists each old
path and where it went, and an import of an old path gives the module at its new one.

Imported first by every entry point, before torch: it records the user's OMP_NUM_THREADS and sets
libgomp's spin count (recipes.runtime.threads), which OpenMP reads only when torch loads it."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

from recipes.runtime.threads import record_user_omp, set_spin_count

__all__ = ["MOVED"]

# Old module path -> new one, for every module that a `_target_` written before the package layout
# names (conf/ as of commit c705098: loggers, the checkpoint IO plugin, Hydra's run-dir callbacks).
MOVED = {
    "recipes.checkpoint_io": "recipes.checkpointing.files",
    "recipes.loggers": "recipes.assembly.loggers",
    "recipes.run_dir_check": "recipes.runtime.run_dir_check",
    "recipes.run_lock": "recipes.runtime.run_lock",
    "recipes.tracking": "recipes.stages.tracking",
}

record_user_omp()
set_spin_count()


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path in MOVED as the module at its new path (one module object under both names).
    The import machinery stamps the old path's spec on the module it is given; exec_module puts the
    module's own spec back, so the module still names its real file and path."""

    def __init__(self) -> None:
        self._real_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module at the new path has run already) but to restore its spec."""
        module.__spec__ = self._real_specs.pop(module.__spec__.name)


if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
    sys.meta_path.append(_OldPaths())
