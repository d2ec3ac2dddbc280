"""What this run created, recorded before anything is created, so that a refused run removes exactly
that and never a folder of the user's: `hydra.run.dir=~/mylogs` that already held files (or nothing)
stays, with only the entries this run added taken out of it, and the `.hydra/` files that Hydra wrote
over (a resume refused after start-up) put back as they were.

`note` runs in the first Hydra callback (recipes/runtime/run_dir_check.py), before Hydra or the run-dir lock
makes the run dir. A multirun job's dir is made by Hydra before any job callback runs, so for a sweep
the record is the sweep dir's, carried to the jobs (which a launcher may run in other processes) in
the environment: a job dir in a sweep dir that this sweep created is the job's own."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Created", "created", "note", "remove_created"]

_NEW_SWEEP = "RECIPES_NEW_SWEEP_DIR"  # the sweep dir this sweep created; unset when it existed before


@dataclass(frozen=True)
class Created:
    """`top`: the outermost folder made for the dir (the dir itself or a parent), or None when the dir
    existed; `before`: the names the dir held when the run started (empty when it was made);
    `configs`: the files of its `.hydra/` folder then, (name, bytes) pairs."""

    top: Path | None
    before: frozenset[str]
    configs: tuple[tuple[str, bytes], ...] = ()


_record: dict[Path, Created] = {}


def _key(folder: Path | str) -> Path:
    return Path(os.path.abspath(folder))


def note(folder: Path | str, sweep: bool = False) -> None:
    """Record, before anything creates it, which of `folder` and its parents this run will create, or
    what an existing `folder` holds now. `sweep`: the folder is a multirun's sweep dir."""
    path = _key(folder)
    top = None
    probe = path
    while not probe.exists() and probe != probe.parent:
        top, probe = probe, probe.parent
    before = frozenset(p.name for p in path.iterdir()) if top is None and path.is_dir() else frozenset()
    _record[path] = Created(top, before, _configs(path / ".hydra") if before else ())
    if sweep:
        if top is None:
            os.environ.pop(_NEW_SWEEP, None)
        else:
            os.environ[_NEW_SWEEP] = str(path)


def _configs(folder: Path) -> tuple[tuple[str, bytes], ...]:
    """The files of a run dir's .hydra/ (config.yaml, hydra.yaml, overrides.yaml: a few kB)."""
    try:
        return tuple((p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file())
    except OSError:
        return ()


def created(folder: Path | str) -> Created | None:
    """What this run created of a run dir (or of a job dir in a new sweep dir); None when unknown."""
    path = _key(folder)
    if path in _record:
        return _record[path]
    if os.environ.get(_NEW_SWEEP) in (str(path), str(path.parent)):  # the new sweep dir, or a job dir in it
        return Created(path, frozenset())
    return None


def remove_created(folder: Path | str) -> None:
    """Remove what this run created for `folder`: the whole dir and the parents made for it when it
    was new (a parent only while empty: another run may have started in it since), else the entries
    added to it since the run started. A folder with no record is left as it is."""
    path = _key(folder)
    record = created(path)
    if record is None:
        return
    if record.top is None:
        for entry in path.iterdir() if path.is_dir() else ():
            if entry.name not in record.before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for name, data in record.configs:
            config = path / ".hydra" / name
            if not config.is_file() or config.read_bytes() != data:
                config.write_bytes(data)
        return
    shutil.rmtree(path, ignore_errors=True)
    parent = path.parent
    while record.top in (parent, *parent.parents):
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            return
        parent = parent.parent
