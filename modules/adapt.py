"""KLD-regularized adaptation (Yu et al. 2013): fine-tune a source model on a new domain while a KL
term keeps its outputs close to the frozen source model's, so it forgets less of the old domain."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from modules.distill import DistillModule

__all__ = ["AdaptModule"]


class AdaptModule(DistillModule):
    """Loss `alpha * CE(y) + (1 - alpha) * KL(p_source || p_adapted)`, i.e. cross-entropy against the
    target `alpha * onehot(y) + (1 - alpha) * p_source`: distillation from the source model at T = 1,
    with the student starting from the source weights. `alpha = 1` is plain fine-tuning.

    The source net is rebuilt from `task.source_ckpt`; like a teacher it is frozen and never saved.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        source: nn.Module | None = None,
        alpha: float = 0.7,
        cache_source_logits: bool = True,
        **classifier: Any,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            teacher=source,
            temperature=1.0,
            alpha=alpha,
            cache_teacher_logits=cache_source_logits,
            **classifier,
        )
        if source is not None:
            ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in source.state_dict().items()}
            if ours != theirs:
                differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
                raise ValueError(
                    f"task.source_ckpt holds a net of another architecture ({differ[0]}: "
                    f"{theirs.get(differ[0])} there, {ours.get(differ[0])} here); adaptation starts from "
                    "the source's weights, so pass the model settings it was trained with"
                )
            net.load_state_dict(source.state_dict())
