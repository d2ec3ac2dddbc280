"""The checkpoint format: Lightning's checkpoint plus a `recipe` entry holding the resolved config,
the Hydra group choices, the data shape and the RNG states, all plain data, so checkpoints load
with `torch.load(weights_only=True)` and rebuild their module from config, never from a pickle."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from callbacks.surgery import quantize
from callbacks.surgery.folding import fold_masks
from callbacks.surgery.structure import edits, replay
from modules.task import Task
from recipes.errors import RecipeError
from recipes.runtime.created_dirs import created

__all__ = [
    "KEY",
    "LATE_EDITS",
    "NotOurs",
    "RecipeState",
    "check_compatible",
    "load_checkpoint",
    "load_weights",
    "model_name",
    "newest_readable",
    "peek",
    "resolve_ckpt_path",
    "restore_structure",
    "rng_states",
    "set_rng_states",
]

KEY = "recipe"
# The structure edits that build on the layers the shape edits leave, by kind (callbacks.surgery.structure.replay).
LATE_EDITS = {quantize.EDIT: quantize.instrument}


def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from, as weights_only-safe values."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np_state}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what rng_states saved. CUDA's states only where both sides have CUDA: a checkpoint saved
    without a GPU resumes on one (its CUDA RNGs keep their seeded state) and one saved on a GPU resumes
    without one (its CUDA states are ignored)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(states["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.asarray(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    if "cuda" in states and torch.cuda.is_available():
        # one state per GPU of the machine that saved it: a machine with fewer GPUs restores those it has
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])


class RecipeState(Callback):
    """Writes the `recipe` entry into every checkpoint and restores the RNG states on resume, so a
    resumed run draws the same random numbers as the uninterrupted one would have."""

    def __init__(self, config: dict[str, Any], choices: dict[str, Any], data: dict[str, Any]) -> None:
        self.entry = {"config": config, "choices": choices, "data": data}

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # structure: the layer edits (factoring, shrinking) that rebuild this net's shapes from config
        checkpoint[KEY] = {**self.entry, "structure": edits(pl_module.shipped_net), "rng": rng_states()}

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if KEY in checkpoint and "rng" in checkpoint[KEY]:
            set_rng_states(checkpoint[KEY]["rng"])


def resolve_ckpt_path(value: str | None, run_dir: Path) -> str | None:
    """`ckpt_path` as given, with `last` meaning this run dir's checkpoints/last.ckpt."""
    if value in (None, ""):
        return None
    if value == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        record = created(run_dir)
        if not last.is_file() and record is not None and record.top is None:  # a run there stopped in epoch 0
            raise RecipeError(
                f"ckpt_path=last: there is no {last}: no epoch of the run in {run_dir} finished, so there is "
                f"nothing to resume; run it again without ckpt_path"
            )
        if not last.is_file():
            raise RecipeError(f"ckpt_path=last: there is no {last}; pass hydra.run.dir=<the run dir to resume>")
        try:
            peek(last)
        except ValueError as err:
            good = newest_readable(last.parent)
            fix = (
                f"the newest readable checkpoint is {good}: resume with ckpt_path={good}"
                if good
                else "there is no other readable checkpoint beside it: start over without ckpt_path"
            )
            raise RecipeError(f"ckpt_path=last: {last} is corrupt ({err}); {fix}") from None
        return str(last)
    return str(value)


class NotOurs(ValueError):
    """A readable file that recipes.train did not write (no `recipe` entry)."""


def _read(path: Path, mmap: bool) -> dict[str, Any]:
    """The one reader of a recipes checkpoint (weights_only): ValueError saying why when it is truncated,
    empty or garbage, NotOurs when it loads but is not ours. `mmap`: map the file instead of reading it
    (cheap even for a large file: little more than its zip index is read)."""
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose index is its last bytes
        raise ValueError("0 bytes" if size == 0 else f"{size} bytes but no complete archive: truncated or overwritten")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a loadable checkpoint"
        text = str(err).strip()
        raise ValueError((text.splitlines()[0] if text else type(err).__name__)[:160]) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or KEY not in ckpt:
        raise NotOurs(f"it has no '{KEY}' entry")
    return ckpt


def peek(path: Path) -> dict[str, Any]:
    """A recipes checkpoint, memory-mapped; ValueError saying why when it is unreadable or not ours."""
    return _read(path, mmap=True)


def newest_readable(directory: Path) -> Path | None:
    """The readable checkpoint in `directory`, besides last.ckpt, that trained the most steps."""
    found = []
    for path in directory.glob("*.ckpt"):
        if path.name == "last.ckpt":
            continue
        try:
            found.append((int(peek(path).get("global_step", 0)), path.stat().st_mtime, path))
        except ValueError:
            continue
    return max(found)[2] if found else None


def load_checkpoint(path: str, key: str = "ckpt_path", mmap: bool = False) -> dict[str, Any]:
    """Load a recipes checkpoint with weights_only=True, or fail with one line saying what is wrong
    (`key` is the config key that named the file; `mmap`: map it, for a look at its records only)."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"{key}={path} does not exist: pass the path of a .ckpt file from a run's checkpoints/")
    try:
        return _read(file, mmap=mmap)
    except NotOurs as err:
        raise RecipeError(f"{key}={path} was not written by recipes.train ({err})") from None
    except ValueError as err:
        raise RecipeError(f"{key}={path} is not a readable checkpoint ({err})") from None


def model_name(ckpt: dict[str, Any]) -> str:
    """The model group option (e.g. `mlp`) a checkpoint was trained with."""
    return str(ckpt[KEY].get("choices", {}).get("model") or ckpt[KEY]["config"]["model"]["_target_"])


def restore_structure(ckpt: dict[str, Any], net: torch.nn.Module, path: str, key: str = "ckpt_path") -> None:
    """Give a net fresh from its config the layer edits (factoring, shrinking) the checkpoint's net
    went through, so its weights fit; a malformed record is refused in one line."""
    recorded = ckpt[KEY].get("structure", [])
    if recorded and not edits(net):
        try:
            replay(net, recorded, LATE_EDITS)
        except ValueError as err:
            raise RecipeError(
                f"{key}={path}: its '{KEY}.structure' record is malformed ({err}); it was not written by recipes.train"
            ) from None


def check_compatible(ckpt: dict[str, Any], module: pl.LightningModule, path: str, key: str = "ckpt_path") -> None:
    """Fail in one line when the checkpoint's weights do not fit `module` (another net or shape)."""
    saved, current = fold_masks(ckpt["state_dict"]), fold_masks(module.state_dict())
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    reshaped = sorted(k for k in set(saved) & set(current) if tuple(saved[k].shape) != tuple(current[k].shape))
    if missing or unexpected or reshaped:
        first = (reshaped or missing or unexpected)[0]
        detail = (
            f"{first} has shape {tuple(saved[first].shape)} there but {tuple(current[first].shape)} here"
            if reshaped
            else f"{len(missing)} missing and {len(unexpected)} unexpected weights, e.g. {first}"
        )
        raise RecipeError(
            f"{key}={path} holds a model={model_name(ckpt)} net that does not fit the configured "
            f"model ({detail}); use the model settings it was trained with"
        )


def load_weights(ckpt: dict[str, Any], module: Task, path: str, key: str = "ckpt_path") -> Task:
    """The one load sequence of a checkpoint into a module its config built: replay the structure
    edits on the shipped net, check that the weights fit, load them (pruning masks folded in)."""
    restore_structure(ckpt, module.shipped_net, path, key)
    check_compatible(ckpt, module, path, key)
    module.load_state_dict(fold_masks(ckpt["state_dict"]))
    return module
