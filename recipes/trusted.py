"""A config read back from a checkpoint is data from whoever wrote the file, and Hydra imports and
calls whatever its `_target_`s name. So before any of it is imported or instantiated, every
`_target_` in it must be one that this project's own YAML (the `conf` package) uses, or one that the
person loading it trusts on their own command line (`trusted_targets=[...]`; never from the
checkpoint). A `${...}` in it is refused too: recipes.train saves its config resolved, and resolving
a hand-made one would run resolvers (`oc.env`, `oc.decode`, which can even make new `_target_`s)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes.checkpoint import KEY
from recipes.errors import RecipeError

TARGET = "_target_"
_PLAIN = (str, int, float, bool, type(None))


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


def _yaml_files(folder: Traversable) -> Iterator[Traversable]:
    for item in folder.iterdir():
        if item.is_dir():
            yield from _yaml_files(item)
        elif item.name.endswith(".yaml"):
            yield item


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every `_target_` the YAML of this installation's `conf` package names (read as text, unresolved)."""
    found = set()
    for file in _yaml_files(resources.files("conf")):
        data = OmegaConf.to_container(OmegaConf.create(file.read_text()), resolve=False)
        found.update(value for _, key, value in entries(data) if key == TARGET and isinstance(value, str))
    return frozenset(found)


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
    ):
        raise RecipeError(
            f"{key}={path}: its '{KEY}.data' entry is not {{input_shape: [C, H, W], num_classes: N}}; "
            f"it was not written by recipes.train"
        )
    allowed = shipped_targets() | set([trusted] if isinstance(trusted, str) else trusted)
    built = tuple(builds)
    untrusted: dict[str, Any] = {}  # where -> target, in walk order
    for where, name, value in entries(config):
        if (
            name == TARGET
            and where.split(".")[0].split("[")[0] in built
            and not (isinstance(value, str) and value in allowed)
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
        asked = ", ".join(f"{where}={value!r}" for where, value in untrusted.items())
        names = ",".join(dict.fromkeys(str(value) for value in untrusted.values()))
        raise RecipeError(
            f"{refuse} asks to build {asked}, which this project does not ship; refusing to run code "
            f"from a checkpoint (if that is your own code and you trust whoever wrote this file, pass "
            f"trusted_targets=[{names}])"
        )
    try:
        return OmegaConf.create(config)
    except Exception as err:  # noqa: BLE001 - e.g. a key type OmegaConf does not take: not a saved config
        raise RecipeError(f"{refuse} is not a config OmegaConf can read ({type(err).__name__})") from None
