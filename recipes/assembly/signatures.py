"""Type-check a config node against the signatures of the classes it instantiates.

The constructors' type hints are the schema, so a value of the wrong type (`data.batch_size=abc`)
fails at start-up with a line naming the key, the value and the expected type, and no schema is
written twice. Hints this checker does not understand are accepted, never guessed at.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from recipes.errors import RecipeError

__all__ = ["check_node", "matches", "parameter_names"]


def _signature_hints(target: Any) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(type hints, defaults, accepts extra keys) over the constructor chain of a class or a function."""
    hints: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    open_kwargs = False
    for fn in functions:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return {}, {}, True
        try:
            fn_hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolvable forward references: check nothing rather than guess
            fn_hints = {}
        for name, param in params.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name == "self":
                continue
            hints.setdefault(name, fn_hints.get(name, Any))
            if param.default is not param.empty:
                defaults.setdefault(name, param.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break  # the chain ends here: a constructor without **kwargs forwards nothing further
        open_kwargs = True  # **kwargs may go to a parent or elsewhere (DDPStrategy -> DDP): accept extras
    return hints, defaults, open_kwargs


def parameter_names(target: Any) -> set[str]:
    """The keyword parameters of a class's constructor chain (or a function), as far as the chain is
    followed: what a config node of that target may set, bar a **kwargs that goes elsewhere."""
    return set(_signature_hints(target)[0])


def matches(value: Any, hint: Any) -> bool:
    """Whether a plain (resolved, containers converted) config value fits a type hint."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, abc.Sequence, abc.Iterable, abc.Collection) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    if origin in (dict, abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    if origin is abc.Callable or hint is abc.Callable:
        return isinstance(value, dict) and "_target_" in value
    if inspect.isclass(hint) and hint.__module__ == "builtins":
        return isinstance(value, hint)
    if inspect.isclass(hint):  # a library class (Tensor, Accelerator, ...): only a _target_ node builds one
        return isinstance(value, dict) and "_target_" in value
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_node(node: Any, key: str) -> None:
    """Walk `node`; every mapping with a `_target_` is checked against its target's signature."""
    if isinstance(node, ListConfig):
        for i, child in enumerate(node):
            check_node(child, f"{key}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    target_name = node.get("_target_")
    if target_name:
        try:
            target = get_object(target_name)
        except Exception as err:  # noqa: BLE001
            raise RecipeError(f"{key}._target_={target_name!r} cannot be imported ({err})") from None
        hints, defaults, open_kwargs = _signature_hints(target)
        partial = bool(node.get("_partial_", False))
        for name in node:
            if str(name).startswith("_"):
                continue
            child = node[name]
            plain = (
                OmegaConf.to_container(child, resolve=True) if isinstance(child, (DictConfig, ListConfig)) else child
            )
            if name not in hints:
                if not open_kwargs and not partial:
                    raise RecipeError(
                        f"{key}.{name} is not a parameter of {target_name}; valid keys: {', '.join(sorted(hints))}"
                    )
                continue
            if isinstance(child, DictConfig) and "_target_" in child:
                continue  # built by Hydra: checked by the recursion below
            if not matches(plain, hints[name]):
                example = f", e.g. the default {defaults[name]!r}" if name in defaults else ""
                source = (
                    f" (from {OmegaConf.to_container(node, resolve=False)[name]})"
                    if OmegaConf.is_interpolation(node, name)
                    else ""
                )
                raise RecipeError(
                    f"{key}.{name}={plain!r}{source} is a {type(plain).__name__}; "
                    f"it must be {_describe(hints[name])}{example}"
                )
    for name in node:
        if not str(name).startswith("_"):
            check_node(node[name], f"{key}.{name}")
