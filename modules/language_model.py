"""The language-model task (`task=lm`): next-symbol cross-entropy over symbol sequences, measured in bits
per character (bpc) and perplexity, and sampling from the trained net (`recipes.generate`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric
from typing_extensions import override

from modules.task import Task

__all__ = ["LanguageModel"]


class LanguageModel(Task):
    """Wraps a sequence net (modules.nets.lstm, modules.nets.transformer) that maps symbols [B, L] to
    next-symbol logits [B, L, V]. Losses are in nats per symbol; `bpc` is the same divided by ln 2 and
    `ppl` is its exponential. `init` (a net rebuilt from `task.init_ckpt`) starts a fine-tune from its
    weights; its vocabulary must be the data's (data.vocab_from reads new text with it). `init_required`
    (recipe=lm_finetune) refuses a run without one at start-up: a `???` in a recipe cannot do it, since
    merging `???` over the task group's `init_ckpt: null` leaves the null."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        init: nn.Module | None = None,
        init_required: bool = False,
        monitor: str = "val/bpc",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__(monitor, monitor_mode)
        shape = tuple(getattr(net, "input_shape", ()))
        if len(shape) != 1:
            raise ValueError(
                f"task=lm needs symbol sequences (data=pytext or data=textfile), but the data gives inputs of "
                f"shape {list(shape)}: pick a text data set, or task=classifier for these inputs"
            )
        self.net = net
        if init is not None:
            net.load_state_dict(init.state_dict())
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_nats, self.test_nats = MeanMetric(), MeanMetric()

    # --- the task contract (modules.task) ----------------------------------------------------------
    @property
    @override
    def shipped_net(self) -> nn.Module:
        return self.net

    @classmethod
    @override
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        if arguments.get("init_required") and arguments.get("init_ckpt") is None:
            raise ValueError(
                "task.init_ckpt is not set, and this recipe fine-tunes a language model: pass "
                "task.init_ckpt=PATH, the checkpoint of a recipe=lm run"
            )

    @override
    def chance_loss(self) -> float | None:
        return math.log(self.net.num_classes)  # a uniform guess over the vocabulary

    @override
    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.net.input_shape, dtype=torch.long, device=self.device)

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return ("test/bpc", "test/ppl", "test/loss")

    @classmethod
    @override
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        return ("val/bpc", "val/loss", "train/loss")

    @override
    def parity_inputs(self, datamodule: Any) -> torch.Tensor:
        """Windows of the test split: an export must match the net on real text."""
        return torch.cat([batch[0] for batch in datamodule.test_dataloader()])[:64]

    # --- training and evaluation ------------------------------------------------------------------
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean next-symbol cross-entropy (nats) of a batch of (symbols, next symbols)."""
        x, y = batch[0], batch[1]
        logits = self.net(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.track_train_loss(loss)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_nats.update(self.loss(batch), weight=batch[1].numel())

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.test_nats.update(self.loss(batch), weight=batch[1].numel())

    def _log_epoch(self, stage: str, metric: MeanMetric) -> torch.Tensor:
        nats = metric.compute()  # reduced over ranks, weighted by symbols
        metric.reset()
        self.log(f"{stage}/loss", nats)
        self.log(f"{stage}/bpc", nats / math.log(2), prog_bar=stage == "val")
        return nats

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_nats)

    @override
    def on_test_epoch_end(self) -> None:
        nats = self._log_epoch("test", self.test_nats)
        self.log("test/ppl", nats.exp())

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    # --- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`prompt` (1-D symbol indices) followed by `max_new_tokens` symbols drawn one at a time from the
        net's next-symbol distribution at `temperature`, among the `top_k` most likely (None: all). The net
        sees at most its context (`input_shape[0]` symbols: a transformer's learned positions end there)."""
        was_training = self.net.training
        self.net.eval()
        context = self.net.input_shape[0]
        symbols = prompt.to(self.device).long().view(1, -1)
        for _ in range(max_new_tokens):
            logits = self.net(symbols[:, -context:])[0, -1].float() / max(temperature, 1e-6)
            if top_k is not None and top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            following = torch.multinomial(probs, 1, generator=generator).to(symbols.device)
            symbols = torch.cat([symbols, following.view(1, 1)], dim=1)
        self.net.train(was_training)
        return symbols[0]
