"""Config nodes into objects: `hydra.utils.instantiate` with the node type-checked against the class's
signature first, and a constructor's complaint about a value turned into one line naming the config key."""

from __future__ import annotations

import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from recipes.assembly.signatures import check_node
from recipes.errors import RecipeError

__all__ = ["instantiate_part", "keyed_message", "plain_config"]


def instantiate_part(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with type checks first and constructor errors reported by key."""
    check_node(node, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RecipeError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):  # a value the class refuses
            raise RecipeError(keyed_message(str(cause), key, str(err))) from None
        raise


def keyed_message(message: str, key: str, hydra_message: str) -> str:
    """A constructor's complaint named by its config key. Constructors name their own keys from the
    group root (`data.batch_size=0 ...`); one built as a nested node (`data.target`, in Hydra's
    `full_key:` line) gets its real path (`data.target.batch_size=0 ...`)."""
    found = re.search(r"full_key: (\S+)\s*$", hydra_message)
    full_key = found.group(1) if found else key
    if message.startswith(f"{key}."):
        return full_key + message[len(key) :] if full_key.startswith(f"{key}.") else message
    return f"{full_key}: {message}"


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what a checkpoint stores to rebuild its module)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
