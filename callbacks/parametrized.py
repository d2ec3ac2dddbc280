"""The shared machinery of the steps that train a weight through a function of real-valued latent
weights (binary, ternary, shared k-means values), on `torch.nn.utils.parametrize`.

Each target layer gets its parametrization in `setup`, before Lightning restores a checkpoint or
builds the optimizer, and keeps it for the whole fit: inactive (the identity) before `start_epoch`,
active from then on. So every checkpoint has the same keys whatever the phase, `ckpt_path=last`
resumes in any phase, and the step's own parameters (learned scales, centroids) are in the
optimizer from the start. The latent weight is `...parametrizations.weight.original`; the weight the
net computes is also written beside it, as the `folded` buffer, in every checkpoint, so a plain net
(recipes.evaluate, recipes.export, the test after fit) loads it without knowing the function
(callbacks/surgery/folding.py folds it in). At the end of training the parametrization is removed with the
computed weight left in place: the net ships plain weights.

Parametrizations are per tensor (callbacks/surgery/weights.py names the targets): a Linear / Conv2d's
`weight`, and each input, recurrent and projection matrix of an LSTM. nn.LSTM computes from a list
of its weights that its forward refreshes whenever an attribute no longer is the tensor it listed, so
it follows a parametrized matrix (a new tensor at every read); `settle_recurrent` stores plain values
in that list where a net is copied. A pruned `<x>` is computed by pruning from `<x>_orig`: there,
`<x>_orig` is parametrized instead, and the pruning mask still multiplies the result, so pruned
weights stay zero.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.utils import parametrize
from typing_extensions import override

from callbacks.formats import dcz
from callbacks.prune import PRUNABLE, masked_weight
from callbacks.step import CompressionStep, Stage
from callbacks.surgery.folding import FOLDED, ORIG, pruned_names, settle_recurrent, snapshot

__all__ = [
    "HiddenLayerStep",
    "LatentWeight",
    "LatentWeightStep",
    "latent_weights",
    "layers",
    "parametrization",
    "parametrized_name",
    "unparametrize",
]


class LatentWeight(nn.Module, ABC):
    """A parametrization `latent -> weight`, the identity until `activate`d."""

    def __init__(self, owner: str, shape: torch.Size) -> None:
        super().__init__()
        self.owner = owner  # the step that registered it
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))  # restored on resume
        self.register_buffer(FOLDED, torch.zeros(shape))  # in checkpoints: the computed weight (on_save_checkpoint)

    @abstractmethod
    def compute(self, latent: torch.Tensor) -> torch.Tensor:
        """The weight the net uses, from its latent weight (with the gradient the method prescribes)."""

    def activate(self, latent: torch.Tensor, weight: torch.Tensor) -> None:
        """Switch on; a subclass first fits its own state (scales, centroids) to `latent` or to
        `weight`, the layer's weight as the net computed it so far (pruning mask applied)."""
        self.active.fill_(True)

    def after_step(self, latent: torch.Tensor) -> None:
        """After each optimizer step while active (e.g. BinaryConnect clips its latent weights)."""

    @override
    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.compute(latent) if bool(self.active) else latent


def parametrized_name(module: nn.Module, tensor: str) -> str:
    """The tensor to parametrize for `module.<tensor>`: `<tensor>_orig` under a pruning mask (the mask
    still applies), else `<tensor>`."""
    return tensor + ORIG if tensor in pruned_names(module) else tensor


def parametrization(module: nn.Module, tensor: str = "weight") -> LatentWeight | None:
    """The latent-weight parametrization of `module.<tensor>` (as a plain net names it), if any."""
    name = parametrized_name(module, tensor)
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in module.parametrizations[name] if isinstance(p, LatentWeight)), None)


def latent_weights(net: nn.Module, owner: str | None = None) -> list[tuple[nn.Module, str, LatentWeight]]:
    """(module, parametrized tensor name, parametrization) for every latent weight of `net` (of step `owner`)."""
    return [
        (module, name, p)
        for module in net.modules()
        if parametrize.is_parametrized(module)
        for name, plist in module.parametrizations.items()
        for p in plist
        if isinstance(p, LatentWeight) and owner in (None, p.owner)
    ]


def layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear / Conv2d of `net` with its name, in forward order for the nets of modules/nets."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, PRUNABLE)]


class LatentWeightStep(CompressionStep):
    """A PRECISION step that parametrizes its target tensors from `start_epoch` to the end."""

    stage = Stage.PRECISION
    encoding = (
        "the .dcz file (callbacks/formats/dcz.py): each tensor in the smallest exact encoding of raw, Huffman-coded "
        "shared values, Han's sparse format, packed sign or ternary bits"
    )
    excludes = {"qat": "both set how the weights are stored", "ptq": "both set how the weights are stored"}

    def __init__(self, start_epoch: int) -> None:
        if start_epoch < 0:
            raise ValueError(f"compress.{self.step}.start_epoch={start_epoch} must be >= 0")
        self.start_epoch = start_epoch
        self.before: nn.Module | None = None

    @abstractmethod
    def targets(self, net: nn.Module) -> list[tuple[nn.Module, str]]:
        """The tensors this step parametrizes, as (module, tensor name as a plain net names it)."""

    @abstractmethod
    def make(self, module: nn.Module, latent: torch.Tensor) -> LatentWeight:
        """The parametrization of one target tensor of `module` (`latent`: the tensor now)."""

    @override
    def epochs(self) -> tuple[int, int]:
        """The step changes the net once, at `start_epoch`; training then goes on through it."""
        return self.start_epoch, self.start_epoch

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        """The net trains with the step on before the budget ends, and the step has layers to act on."""
        if self.start_epoch >= max_epochs:
            raise ValueError(
                f"compress.{self.step}.start_epoch={self.start_epoch} must be < trainer.max_epochs="
                f"{max_epochs} so the net trains with {self.step} weights"
            )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for module, tensor in self.targets(pl_module.shipped_net):
            if parametrization(module, tensor) is None:
                name = parametrized_name(module, tensor)
                parametrize.register_parametrization(module, name, self.make(module, getattr(module, name)))

    @override
    def encoded_bytes(self, net: nn.Module) -> dict[str, int]:
        """Every tensor as the .dcz file holds it: the report's total is that file's size."""
        return dcz.encode_net(net)[1]

    @override
    def results(self, net: nn.Module, dense_bytes: int) -> dict[str, Any]:
        """`stages`: bytes and ratio to dense after each of Han's stages (Table 1): pruning (nonzero fp32
        values + relative positions), quantization (codebooks + fixed-width indices), Huffman (the .dcz)."""
        stages = dcz.encode_net(net)[2]
        return {
            "stages": {name: {"bytes": size, "ratio": round(dense_bytes / size, 3)} for name, size in stages.items()}
        }

    def mine(self, net: nn.Module) -> list[tuple[nn.Module, str, LatentWeight]]:
        """The tensors of `net` this step parametrized: (module, parametrized name, parametrization)."""
        return latent_weights(net, self.step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.shipped_net
        pending = [(m, name, p) for m, name, p in self.mine(net) if not bool(p.active)]
        if trainer.current_epoch < self.start_epoch or not pending:
            return
        if self.before is None:
            self.before = snapshot(net)
        with torch.no_grad():
            for module, name, param in pending:
                param.activate(latent(module, name), masked_weight(module, name.removesuffix(ORIG)).detach())

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        with torch.no_grad():
            for module, name, param in self.mine(pl_module.shipped_net):
                if bool(param.active):
                    param.after_step(latent(module, name))

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        prefix = pl_module.shipped_prefix()
        names = {id(m): name for name, m in pl_module.shipped_net.named_modules()}
        with torch.no_grad():
            for module, tensor, _ in self.mine(pl_module.shipped_net):
                key = ".".join(filter(None, (prefix, names[id(module)], "parametrizations", tensor, "0", FOLDED)))
                checkpoint["state_dict"][key] = getattr(module, tensor).detach().clone()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before pruning's on_fit_end, which needs a plain `weight_orig` again
        unparametrize(pl_module.shipped_net, self.step)


def latent(module: nn.Module, name: str) -> torch.Tensor:
    """The latent (real-valued, trained) tensor under `module`'s parametrized tensor `name`."""
    return module.parametrizations[name].original


def unparametrize(net: nn.Module, owner: str | None = None) -> nn.Module:
    """Remove latent-weight parametrizations (of step `owner`, or all), leaving the computed weights."""
    with torch.no_grad():
        for module, name, _ in latent_weights(net, owner):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return settle_recurrent(net)


class HiddenLayerStep(LatentWeightStep):
    """A latent-weight step on every Linear / Conv2d but, with `skip_first_last`, the first and the
    last, which binary and ternary nets keep at full precision."""

    def __init__(self, start_epoch: int, skip_first_last: bool) -> None:
        super().__init__(start_epoch)
        self.skip_first_last = skip_first_last

    @override
    def targets(self, net: nn.Module) -> list[tuple[nn.Module, str]]:
        found = [(module, "weight") for _, module in layers(net)]
        return found[1:-1] if self.skip_first_last else found

    @override
    def check(self, net: nn.Module, max_epochs: int) -> None:
        super().check(net, max_epochs)
        if not self.targets(net):
            raise ValueError(
                f"compress.{self.step}.skip_first_last=true keeps all {len(layers(net))} weight layers of "
                f"this net at full precision: set compress.{self.step}.skip_first_last=false or use a "
                "deeper net, e.g. model.hidden=[300,100]"
            )
