"""The symbols of a character-level text data set: what maps text to the class indices a language
model predicts and back. Plain data (a list of str) goes into a checkpoint, so a model trained on one
text reads another with the same indices (data.vocab_from)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from recipes.errors import RecipeError

__all__ = ["REPLACEMENT", "UNK", "Vocabulary", "checkpoint_vocabulary"]

UNK = "<unk>"  # index 0: every character the vocabulary does not hold
REPLACEMENT = "\ufffd"  # what UNK decodes as (Unicode's replacement character)


@dataclass(frozen=True)
class Vocabulary:
    """`symbols[0]` is UNK, the rest single characters, sorted: the index of a symbol is its class."""

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        rest = self.symbols[1:]
        if (
            not self.symbols
            or self.symbols[0] != UNK
            or any(len(s) != 1 for s in rest)
            or list(rest) != sorted(set(rest))
        ):
            raise ValueError(
                f"a vocabulary is {UNK!r} then distinct single characters, sorted; got {self.symbols[:8]!r}..."
            )
        object.__setattr__(self, "_index", {symbol: i for i, symbol in enumerate(self.symbols)})

    @classmethod
    def of_text(cls, text: str) -> Vocabulary:
        """Every distinct character of `text`, sorted, after UNK (the same text, the same vocabulary)."""
        return cls((UNK, *sorted(set(text))))

    def encode(self, text: str) -> torch.Tensor:
        """1-D int64 indices of `text`'s characters; one the vocabulary lacks reads as UNK (0)."""
        index = self._index  # type: ignore[attr-defined]
        return torch.tensor([index.get(char, 0) for char in text], dtype=torch.long)

    def unknown(self, text: str) -> int:
        """How many characters of `text` the vocabulary lacks (each reads as UNK)."""
        index = self._index  # type: ignore[attr-defined]
        return sum(1 for char in text if char not in index)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of `ids`; UNK reads as the replacement character."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(REPLACEMENT if i == 0 else self.symbols[i] for i in values)

    def __len__(self) -> int:
        return len(self.symbols)

    def to_list(self) -> list[str]:
        """Plain data for a checkpoint (recipe.data.vocab)."""
        return list(self.symbols)

    @classmethod
    def from_list(cls, symbols: list[str]) -> Vocabulary:
        """The vocabulary `to_list` wrote."""
        return cls(tuple(symbols))


def checkpoint_vocabulary(path: str, key: str = "data.vocab_from") -> Vocabulary:
    """The vocabulary a checkpoint of recipes.train recorded (`recipe.data.vocab`), read without
    unpickling code (weights_only) and without reading the weights (mmap)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise RecipeError(f"{key}={path} does not exist: point it at a .ckpt written by recipes.train") from None
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, OSError, ... for a file it cannot read
        first = (str(err).strip().splitlines() or [""])[0]
        raise RecipeError(
            f"{key}={path} is not a readable checkpoint ({type(err).__name__}: {first}): point it at a .ckpt "
            "written by recipes.train"
        ) from None
    data = _entry(_entry(ckpt, "recipe"), "data")
    symbols = data.get("vocab")
    if symbols is None:
        shape = data.get("input_shape")
        what = f"was trained on images (input_shape {shape})" if shape is not None else "has no vocabulary"
        raise RecipeError(
            f"{key}={path} {what}, not on text (no recipe.data.vocab): point it at a checkpoint of a text "
            f"model, or set {key}=null to build the vocabulary from the data"
        )
    try:
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"a {type(symbols).__name__}, not a list of str")
        return Vocabulary.from_list(symbols)
    except ValueError as err:
        raise RecipeError(
            f"{key}={path}: its recipe.data.vocab is not a vocabulary ({err}); it was not written by recipes.train"
        ) from None


def _entry(mapping: Any, name: str) -> dict[str, Any]:
    """`mapping[name]` when both are mappings, else empty (a checkpoint of another kind)."""
    value = mapping.get(name) if isinstance(mapping, dict) else None
    return value if isinstance(value, dict) else {}
