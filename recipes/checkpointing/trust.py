"""A config read back from a checkpoint is data from whoever wrote the file, and Hydra imports and
calls whatever its `_target_`s name. So before any of it is imported or instantiated, every
`_target_` in it must be one that this project's own YAML (the `conf` package) uses, or one that the
person loading it trusts on their own command line (`trusted_targets=[...]`; never from the
checkpoint). A `${...}` in it is refused too: recipes.train saves its config resolved, and resolving
a hand-made one would run resolvers (`oc.env`, `oc.decode`, which can even make new `_target_`s).

A shipped target must also fit its slot: a target is allowed in the part the project's YAML puts it in
(a logger's target under `logger`, never under `data`, where a loader would build it), and the root of
each built part must be of its kind (a data module, a net, a task), so a checkpoint cannot make a
loader build a shipped class that writes files where the checkpoint chooses."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recipes.checkpointing.format import KEY
from recipes.errors import RecipeError

__all__ = ["ROLES", "TARGET", "entries", "saved_config", "shipped_targets", "shipped_targets_by_part"]

TARGET = "_target_"
_PLAIN = (str, int, float, bool, type(None))
_GLOBAL = "# @package _global_"
# What the root node of each part a loader builds must be (named, not imported: see _check_roots).
ROLES = {
    "data": "lightning.pytorch.LightningDataModule",
    "model": "torch.nn.Module",
    "task": "modules.task.Task",
}


def entries(data: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, key, value) of every mapping entry and list item below `data`, parents first."""
    if isinstance(data, dict):
        items = ((f"{path}.{key}" if path else str(key), key, value) for key, value in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{path}[{i}]", i, value) for i, value in enumerate(data))
    else:
        return
    for where, key, value in items:
        yield where, key, value
        yield from entries(value, where)


@functools.cache
def shipped_targets_by_part() -> dict[str, frozenset[str]]:
    """Every `_target_` the YAML of this installation's `conf` package names (read as text, unresolved),
    by the top-level part of the config it lands in: a group file's group (conf/data/* -> `data`,
    whatever key it is placed at below that), or for a `_global_` file the first key of the entry."""
    found: dict[str, set[str]] = {}
    root = resources.files("conf")
    for file, group in _yaml_files_with_group(root):
        text = file.read_text()
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        for where, key, value in entries(data):
            if key == TARGET and isinstance(value, str):
                part = where.split(".")[0].split("[")[0] if group is None or _GLOBAL in text else group
                found.setdefault(part, set()).add(value)
    return {part: frozenset(targets) for part, targets in found.items()}


def _yaml_files_with_group(folder: Traversable, group: str | None = None) -> Iterator[tuple[Traversable, str | None]]:
    """Each YAML file below `folder` with its top-level group (None for the root's primary configs)."""
    for item in folder.iterdir():
        if item.is_dir():
            yield from _yaml_files_with_group(item, group or item.name)
        elif item.name.endswith(".yaml"):
            yield item, group


def shipped_targets() -> frozenset[str]:
    """Every `_target_` the shipped YAML names, in any part."""
    return frozenset().union(*shipped_targets_by_part().values())


def _check_roots(config: dict[str, Any], built: tuple[str, ...], refuse: str) -> None:
    """Each built part is a mapping whose `_target_` is of its kind. The target is importable without
    risk here (it is shipped, or trusted by the caller), so its class is checked, not its name."""
    for part in built:
        node = config.get(part)
        if not isinstance(node, dict) or not isinstance(node.get(TARGET), str):
            raise RecipeError(
                f"{refuse} has no {part}._target_ to build its {part} from; it was not written by recipes.train"
            )
        role = ROLES.get(part)
        if role is None:
            continue
        try:
            fits = issubclass(get_class(node[TARGET]), get_class(role))
        except Exception:  # noqa: BLE001 - a target that is not a class cannot be a data module, net or task
            fits = False
        if not fits:
            raise RecipeError(
                f"{refuse} asks to build {part}._target_={node[TARGET]!r}, which is not a {role.rpartition('.')[2]}; "
                f"refusing to build it as the {part}"
            )


def saved_config(
    ckpt: dict[str, Any],
    key: str,
    path: str,
    trusted: Iterable[str] | str = (),
    builds: Iterable[str] = ("data", "model", "task"),
) -> DictConfig:
    """The config saved in a loaded checkpoint, once the parts the caller builds from it (`builds`, its
    top-level keys) are known to name only trusted targets. The rest (the run's callbacks, loggers,
    strategy) is never instantiated from a checkpoint, so a user's own callback there does not make the
    checkpoint unreadable; it is still checked to be plain data without interpolations.

    `key`=`path` names the file in errors; `trusted` adds targets the caller's own config allows."""
    entry = ckpt[KEY]
    config, data = entry.get("config"), entry.get("data")
    refuse = f"{key}={path}: its saved config"
    if not isinstance(config, dict):
        raise RecipeError(f"{refuse} is a {type(config).__name__}, not a mapping; it was not written by recipes.train")
    shape = data.get("input_shape") if isinstance(data, dict) else None
    if not (
        isinstance(shape, list)
        and shape
        and all(type(n) is int for n in shape)
        and type(data.get("num_classes")) is int
        and (
            data.get("vocab") is None
            or (isinstance(data["vocab"], list) and all(type(c) is str for c in data["vocab"]))
        )
    ):
        raise RecipeError(
            f"{key}={path}: its '{KEY}.data' entry is not {{input_shape: [C, H, W], num_classes: N, vocab: [symbols] (text only)}}; "
            f"it was not written by recipes.train"
        )
    mine = set([trusted] if isinstance(trusted, str) else trusted)
    by_part = shipped_targets_by_part()
    built = tuple(builds)
    untrusted: dict[str, Any] = {}  # where -> target, in walk order
    for where, name, value in entries(config):
        part = where.split(".")[0].split("[")[0]
        if (
            name == TARGET
            and part in built
            and not (isinstance(value, str) and value in mine | by_part.get(part, set()))
        ):
            untrusted[where] = value
        elif isinstance(value, str) and "${" in value:
            raise RecipeError(
                f"{refuse} has an interpolation, {where}={value!r}; recipes.train saves its config "
                f"resolved, so this was not written by it: refusing to resolve it"
            )
        elif not isinstance(value, (dict, list, tuple, *_PLAIN)):
            raise RecipeError(f"{refuse} holds a {type(value).__name__} at {where}, which is not config data")
    if untrusted:
        elsewhere = {w: v for w, v in untrusted.items() if isinstance(v, str) and v in shipped_targets()}
        if elsewhere:
            where, value = next(iter(elsewhere.items()))
            parts = ", ".join(sorted(p for p, targets in by_part.items() if value in targets))
            raise RecipeError(
                f"{refuse} asks to build {where}={value!r}, which this project ships for another part of a run "
                f"({parts}), not for {where.split('.')[0].split('[')[0]}: refusing to build it there"
            )
        asked = ", ".join(f"{where}={value!r}" for where, value in untrusted.items())
        names = ",".join(dict.fromkeys(str(value) for value in untrusted.values()))
        raise RecipeError(
            f"{refuse} asks to build {asked}, which this project does not ship; refusing to run code "
            f"from a checkpoint (if that is your own code and you trust whoever wrote this file, pass "
            f"trusted_targets=[{names}])"
        )
    _check_roots(config, built, refuse)
    try:
        return OmegaConf.create(config)
    except Exception as err:  # noqa: BLE001 - e.g. a key type OmegaConf does not take: not a saved config
        raise RecipeError(f"{refuse} is not a config OmegaConf can read ({type(err).__name__})") from None
