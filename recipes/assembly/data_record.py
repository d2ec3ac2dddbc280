"""What a checkpoint records of its data (`recipe.data`): the input shape and class count that size the
net, and for text the vocabulary, since a symbol's index means nothing without it. A checkpoint's
vocabulary is checked against the data a later run reads, so a model is never fed indices it was not
trained on."""

from __future__ import annotations

from typing import Any

from recipes.data.contract import TextData
from recipes.errors import RecipeError

__all__ = ["check_vocabulary", "data_record"]


def data_record(datamodule: Any) -> dict[str, Any]:
    """The `recipe.data` entry of a run's checkpoints: plain data (weights_only loads it)."""
    record: dict[str, Any] = {"input_shape": list(datamodule.input_shape), "num_classes": datamodule.num_classes}
    if isinstance(datamodule, TextData):
        record["vocab"] = list(datamodule.vocab.to_list())
    return record


def check_vocabulary(recorded: dict[str, Any], datamodule: Any, key: str, path: str) -> None:
    """Refuse, in one line, data whose vocabulary is not the one the checkpoint `key`=`path` was trained
    with (or text data for a checkpoint of images, and the other way round)."""
    saved = recorded.get("vocab")
    mine = list(datamodule.vocab.to_list()) if isinstance(datamodule, TextData) else None
    if saved == mine:
        return
    if saved is None:
        raise RecipeError(f"{key}={path} was not trained on text, but the data is text: use the data it was trained on")
    if mine is None:
        raise RecipeError(f"{key}={path} was trained on text ({len(saved)} symbols), but the data is not text")
    raise RecipeError(
        f"{key}={path}'s vocabulary ({len(saved)} symbols) is not this data's ({len(mine)} symbols): "
        f"pass data.vocab_from={path} to read this text with the checkpoint's vocabulary"
    )
