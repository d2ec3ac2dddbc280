"""DARTS search (Liu, Simonyan, Yang, ICLR 2019) as a task: the supernet's weights train on one half of
the training split and its architecture weights alpha on the other (the bilevel problem), alternating
every step, with two optimizers (the weights' SGD with momentum from `task.optimizer`, Adam for alpha
from `task.arch_optimizer`, as the paper). `order=1` takes alpha's gradient at the current weights
(first-order DARTS); `order=2` through one unrolled weight step, its Hessian-vector product by finite
differences (the paper's eq. 7-8).

The halves are fixed for the whole search: a training sample with an even index (the data module adds
the indices) trains the weights, an odd one alpha. The genotype is derived from the last epoch's
alphas (as DARTS does); the checkpoint the run ships and tests is the supernet's best by `task.monitor`.

The known failure, cells collapsing onto skip connections (Chen et al., P-DARTS; Chu et al., DARTS-):
the skips of the normal cell derived at each epoch end are logged (`search/skips`), and the genotype
the search ships caps them at `max_skips`, replacing the weakest skip edges by their best other
operation (P-DARTS). The cap acts on the result, not on the search, so it never stops a search early
and the uncapped count stays visible in results.json."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from typing_extensions import override

from modules.classifier import ClassifierModule
from modules.nas.networks import SearchNetwork
from modules.nas.pictures import draw_genotype, plot_alpha_trajectory

__all__ = ["DartsSearchModule"]

TRAJECTORY_KEY = "darts_alpha_trajectory"  # checkpoint key: softmax(alpha) at each epoch end so far


class DartsSearchModule(ClassifierModule):
    """The search: a SearchNetwork, trained by alternating an alpha step and a weight step per batch."""

    manual_optimization = True  # the task contract: two optimizers, stepped here
    pipelines = False

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        arch_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        order: int = 1,
        max_skips: int | None = 2,
        grad_clip: float = 5.0,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
    ) -> None:
        if not isinstance(net, SearchNetwork):
            raise ValueError(f"task=darts searches a model=darts_search supernet, not {type(net).__name__}")
        self.check_arguments({"order": order, "max_skips": max_skips, "grad_clip": grad_clip})
        super().__init__(net, optimizer, scheduler, monitor=monitor, monitor_mode=monitor_mode)
        self.automatic_optimization = False
        self.arch_optimizer_factory = arch_optimizer
        self.order, self.max_skips, self.grad_clip = order, max_skips, grad_clip
        self.needs_sample_index = True  # the data module adds each sample's index: it picks the sample's half
        self.trajectory: list[torch.Tensor] = []  # [2, edges, ops] softmax(alpha) per finished epoch

    @classmethod
    @override
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        if "order" in arguments and arguments["order"] not in (1, 2):
            raise ValueError(f"task.order={arguments['order']} must be 1 (first-order DARTS) or 2 (unrolled)")
        skips = arguments.get("max_skips")
        if skips is not None and skips < 0:
            raise ValueError(f"task.max_skips={skips} must be >= 0, or null for no cap on skip connections")
        if "grad_clip" in arguments and not arguments["grad_clip"] > 0:
            raise ValueError(f"task.grad_clip={arguments['grad_clip']} must be positive")

    # --- the bilevel step -----------------------------------------------------------------------
    @override
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y, index = batch[0], batch[1], batch[2]
        arch = index % 2 == 1
        weight_opt, arch_opt = self.optimizers()
        if arch.any():
            arch_opt.zero_grad()
            if self.order == 2 and (~arch).any():
                self.unrolled_arch_gradient(x[~arch], y[~arch], x[arch], y[arch], weight_opt.optimizer)
            else:
                self.manual_backward(self.loss_fn(self.net(x[arch]), y[arch]))
            arch_opt.step()
        if (~arch).any():
            weight_opt.zero_grad()
            logits = self.net(x[~arch])
            loss = self.loss_fn(logits, y[~arch])
            self.manual_backward(loss)
            nn.utils.clip_grad_norm_(self.net.weight_parameters(), self.grad_clip)
            weight_opt.step()
            self.count_correct(logits, y[~arch])
            self.track_train_loss(loss.detach())

    def unrolled_arch_gradient(
        self,
        x_w: torch.Tensor,
        y_w: torch.Tensor,
        x_a: torch.Tensor,
        y_a: torch.Tensor,
        weight_opt: torch.optim.Optimizer,
    ) -> None:
        """alpha.grad = d L_a(w', alpha) / d alpha - xi * (d2 L_w / d alpha d w) . d L_a(w') / d w', with
        w' = w - xi * d L_w(w) / d w one SGD step at the weights' learning rate xi (DARTS eq. 7); the
        second term by central differences at w +- eps . d L_a / d w' (eq. 8)."""
        net, weights, alphas = self.net, self.net.weight_parameters(), self.net.arch_parameters()
        names = [name for name, p in net.named_parameters() if not name.startswith("alpha_")]
        xi = weight_opt.param_groups[0]["lr"]
        grads = torch.autograd.grad(self.loss_fn(net(x_w), y_w), weights, allow_unused=True)
        unrolled = {n: w - xi * g if g is not None else w for n, w, g in zip(names, weights, grads, strict=True)}
        unrolled_live = {n: w.detach().requires_grad_() for n, w in unrolled.items()}
        loss_a = self.loss_fn(functional_call(net, unrolled_live, (x_a,)), y_a)
        alpha_grads = torch.autograd.grad(loss_a, alphas, retain_graph=True, allow_unused=True)
        w_grads = torch.autograd.grad(loss_a, list(unrolled_live.values()), allow_unused=True)
        w_grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(w_grads, weights, strict=True)]
        eps = 0.01 / torch.cat([g.flatten() for g in w_grads]).norm().clamp(min=1e-12)
        with torch.no_grad():
            for w, g in zip(weights, w_grads, strict=True):
                w.add_(g, alpha=float(eps))
        plus = torch.autograd.grad(self.loss_fn(net(x_w), y_w), alphas, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, w_grads, strict=True):
                w.sub_(g, alpha=2 * float(eps))
        minus = torch.autograd.grad(self.loss_fn(net(x_w), y_w), alphas, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, w_grads, strict=True):
                w.add_(g, alpha=float(eps))
        distributed = self._trainer is not None and self.trainer.world_size > 1
        for alpha, direct, p, m in zip(alphas, alpha_grads, plus, minus, strict=True):
            if direct is not None:  # None: a cell type the net does not have (e.g. no reduction cell)
                grad = direct - xi * (p - m) / (2 * eps)
                # autograd.grad bypasses DDP's gradient all-reduce: average over the ranks here
                alpha.grad = self.trainer.strategy.reduce(grad, reduce_op="mean") if distributed else grad

    @override
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.scheduler_factory is not None:  # manual optimization: the module steps the weights' schedule
            self.lr_schedulers().step()
        normal, reduce = (w.detach().cpu() for w in self.net.arch_weights())
        self.trajectory.append(torch.stack([normal, reduce]))
        genotype, _ = self.net.genotype(max_skips=None)
        self.log("search/skips", float(sum(op == "skip" for node in genotype.normal for op, _ in node)))

    @override
    def configure_optimizers(self) -> Any:
        weights = self.optimizer_factory(self.net.weight_parameters())
        arch = self.arch_optimizer_factory(self.net.arch_parameters())
        if self.scheduler_factory is None:
            return [weights, arch]
        return [weights, arch], [self.scheduler_factory(weights)]

    # --- the result -----------------------------------------------------------------------------
    def final_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(alpha) at the end of the search: the last epoch's (what DARTS derives from), not the
        alphas of the checkpoint a run ships and tests (the best supernet by val/acc), when the
        trajectory has it."""
        if self.trajectory:
            return self.trajectory[-1][0], self.trajectory[-1][1]
        normal, reduce = self.net.arch_weights()
        return normal.detach().cpu(), reduce.detach().cpu()

    def search_result(self) -> dict[str, Any]:
        """The derived genotype (skips capped), the uncapped count, and the final softmax(alpha)."""
        weights = self.final_weights()
        genotype, replaced = self.net.genotype(self.max_skips, weights)
        uncapped, _ = self.net.genotype(None, weights)
        return {
            "genotype": str(genotype),
            "skips_uncapped": sum(op == "skip" for node in uncapped.normal for op, _ in node),
            "skips_replaced": replaced,
            "max_skips": self.max_skips,
            "order": self.order,
            "operations": list(self.net.operations),
            "epochs": len(self.trajectory),
            "weights": {"normal": weights[0].tolist(), "reduce": weights[1].tolist()},
        }

    @override
    def run_record(self) -> dict[str, Any]:
        return {"darts": self.search_result()}

    @override
    def on_fit_end(self) -> None:
        if self.global_rank != 0:
            return
        folder = Path(self.trainer.default_root_dir)
        genotype, _ = self.net.genotype(self.max_skips, self.final_weights())
        draw_genotype(genotype, folder / "genotype.png")
        if self.trajectory:
            plot_alpha_trajectory(
                torch.stack(self.trajectory), self.net.operations, self.net.nodes, folder / "alphas.png"
            )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAJECTORY_KEY] = [t.clone() for t in self.trajectory]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.trajectory = list(checkpoint.get(TRAJECTORY_KEY, []))
