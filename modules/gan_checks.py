"""Refusals of GAN task settings that cannot train, each naming the key and a value that works: the
plain values (run by the start-up checks before a feature classifier trains) and the parts built
from config (the net pair and the feature classifier)."""

from __future__ import annotations

from typing import Any

from torch import nn

from modules.gan_losses import LOSSES
from modules.nets.gan_pair import GanPair

__all__ = ["check_parts", "check_settings"]


def check_settings(arguments: dict[str, Any]) -> None:
    """ValueError for a bad plain-valued argument of modules.gan.GanModule (absent: its default)."""
    get = arguments.get
    if get("d_steps", 1) < 1:
        raise ValueError(f"task.d_steps={get('d_steps')} must be >= 1 (discriminator updates per generator update)")
    if get("d_lr_scale", 1.0) <= 0:
        raise ValueError(
            f"task.d_lr_scale={get('d_lr_scale')} must be > 0 (discriminator LR = this x task.optimizer.lr), e.g. 0.5"
        )
    if get("latent_dim", 1) < 1:
        raise ValueError(f"task.latent_dim={get('latent_dim')} must be >= 1 (the size of the generator's noise input)")
    loss = get("loss", "non_saturating")
    if loss not in LOSSES:
        raise ValueError(f"task.loss={loss} is not one of {', '.join(LOSSES)}")
    smoothing = get("label_smoothing", 0.0)
    if not 0 <= smoothing < 1 or (smoothing and loss == "hinge"):
        raise ValueError(f"task.label_smoothing={smoothing} must be in [0, 1), and 0 with task.loss=hinge")
    if not 0 <= get("ema_decay", 0.0) < 1:
        raise ValueError(
            f"task.ema_decay={get('ema_decay')} must be in [0, 1) (0: no average of the generator's "
            "weights), e.g. 0.998"
        )
    for key in ("fd_samples", "val_samples"):
        if get(key, 2) < 2:
            raise ValueError(f"task.{key}={get(key)} must be >= 2 (a Frechet distance needs a covariance)")
    if get("grid_every_n_epochs", 1) < 1:
        raise ValueError(f"task.grid_every_n_epochs={get('grid_every_n_epochs')} must be >= 1")


def check_parts(net: GanPair, feature: nn.Module | None, latent_dim: int, conditional: bool) -> None:
    """ValueError unless the net pair agrees with the task's latent size and conditioning (a
    conditional GAN needs labelled data) and the feature classifier is there."""
    if conditional and net.num_classes < 2:
        raise ValueError(
            f"task.conditional=true needs labelled data with at least 2 classes, but the data gives "
            f"{net.num_classes}; set task.conditional=false"
        )
    if (net.latent_dim, net.conditional) != (latent_dim, conditional):
        raise ValueError(
            f"model.latent_dim={net.latent_dim} / model.conditional={net.conditional} differ from "
            f"task.latent_dim={latent_dim} / task.conditional={conditional}: set them in task only"
        )
    if feature is None:
        raise ValueError(
            "task.feature_ckpt is not set: pass task.feature_ckpt=PATH of a classifier trained on "
            "this data, or use recipe=gan, which trains one first"
        )
