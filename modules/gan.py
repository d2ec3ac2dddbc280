"""Generative adversarial training (Goodfellow et al. 2014, Algorithm 1) as a task: a generator and a
discriminator, two optimizers, `d_steps` discriminator updates per generator update, and honest
offline metrics (Frechet distance and class coverage in a classifier's features, modules.gan_metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from modules.gan_checks import check_parts, check_settings
from modules.gan_ema import ParameterAverage
from modules.gan_losses import discriminator_loss, generator_loss
from modules.gan_metrics import GanScores
from modules.gan_pictures import publish_grid, sample_grid
from modules.nets.gan_pair import GanPair
from modules.task import Task

__all__ = ["GanModule"]

AVERAGE_KEY = "generator_average"  # the checkpoint entry of the generator's average (modules.gan_ema)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class GanModule(Task):
    """Trains `net` (a modules.nets GanPair) with manual optimization.

    Each training batch is one discriminator step on that batch of real images and as many generated
    ones; every `d_steps`-th batch is followed by one generator step (Algorithm 1's k). So an epoch
    shows D every real image once and makes len(loader) / k generator updates.
    `d_lr_scale`: the discriminator's LR relative to the generator's (task.optimizer.lr); recipe=gan
    runs a discriminator at half speed, which kept the samples improving where an equal one drifted.
    `feature`: the frozen classifier (from `task.feature_ckpt`) whose penultimate features measure
    the Frechet distance; `val/fd` compares a fixed latent batch's samples with the validation
    images, and picks the best checkpoint.
    `ema_decay` > 0 keeps an exponential moving average of the generator's weights (modules.gan_ema):
    val/fd and the grids sample from it, and every checkpoint holds it as the generator's weights (so
    the tested, exported and evaluated generator is the averaged one), with the trained weights kept
    beside it for an exact resume.
    """

    manual_optimization = True  # the task contract's capability: it steps its two optimizers itself

    def __init__(
        self,
        net: GanPair,
        optimizer: OptimizerFactory,
        feature: nn.Module | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        loss: str = "non_saturating",
        d_steps: int = 1,
        d_lr_scale: float = 1.0,
        label_smoothing: float = 0.0,
        ema_decay: float = 0.0,
        latent_dim: int = 32,
        conditional: bool = False,
        fd_samples: int = 1000,
        val_samples: int = 500,
        sample_seed: int = 0,
        grid_every_n_epochs: int = 1,
        monitor: str = "val/fd",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__(monitor, monitor_mode)
        self.check_arguments(
            {
                "d_steps": d_steps,
                "d_lr_scale": d_lr_scale,
                "latent_dim": latent_dim,
                "loss": loss,
                "label_smoothing": label_smoothing,
                "ema_decay": ema_decay,
                "fd_samples": fd_samples,
                "val_samples": val_samples,
                "grid_every_n_epochs": grid_every_n_epochs,
            }
        )
        check_parts(net, feature, latent_dim, conditional)
        self.automatic_optimization = not self.manual_optimization
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss, self.d_steps, self.label_smoothing = loss, d_steps, label_smoothing
        self.d_lr_scale = d_lr_scale
        self.latent_dim, self.conditional, self.num_classes = latent_dim, conditional, net.num_classes
        self.fd_samples, self.sample_seed, self.grid_every_n_epochs = fd_samples, sample_seed, grid_every_n_epochs
        self.generator_average = ParameterAverage(net.generator, ema_decay) if ema_decay else None
        self.scores = GanScores(feature)
        # The fixed latent batch: the same samples every epoch, so val/fd and the grids compare epochs.
        z, labels = self.latent_batch(val_samples, sample_seed)
        self.register_buffer("fixed_z", z)
        self.register_buffer("fixed_labels", labels)

    # --- the task contract ----------------------------------------------------------------------
    @classmethod
    @override
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        check_settings(arguments)

    @property
    @override
    def shipped_net(self) -> nn.Module:
        return self.net.generator  # forward(z, labels=None): the labels matter only when conditional

    @override
    def example_input(self, batch_size: int = 1) -> Any:
        z, labels = self.latent_batch(batch_size, self.sample_seed, self.device)
        return (z, labels) if self.conditional else (z,)

    @classmethod
    @override
    def test_metric_names(cls) -> tuple[str, ...]:
        return ("test/fd", "test/fd_real", "test/class_coverage", "test/cond_acc")

    @classmethod
    @override
    def monitorable_metric_names(cls) -> tuple[str, ...] | None:
        return ("val/fd", "train/d_loss", "train/g_loss")

    # --- sampling -------------------------------------------------------------------------------
    def latent_batch(self, n: int, seed: int | None = None, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n latent vectors and class labels (cycling through the classes); seeded: the same every call."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, self.latent_dim, generator=generator)
        labels = torch.arange(n) % max(1, self.num_classes)
        return z.to(device or "cpu"), labels.to(device or "cpu")

    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net.generator(z, labels if self.conditional else None)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net.discriminator(images, labels if self.conditional else None)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, labels: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        """Generated images in eval mode (BatchNorm running statistics), in chunks."""
        mode = self.net.generator.training
        self.net.generator.eval()
        images = torch.cat([self.generate(z[i : i + chunk], labels[i : i + chunk]) for i in range(0, len(z), chunk)])
        self.net.generator.train(mode)
        return images

    # --- training -------------------------------------------------------------------------------
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        real, labels = batch[0], batch[1]
        g_opt, d_opt = self.optimizers()
        z = torch.randn(len(real), self.latent_dim, device=self.device)
        fake_labels = torch.randint(0, max(1, self.num_classes), (len(real),), device=self.device)
        fake = self.generate(z, fake_labels)
        # Discriminator step: on real images and detached samples (no gradient reaches G).
        d_loss = discriminator_loss(
            self.discriminate(real, labels),
            self.discriminate(fake.detach(), fake_labels),
            self.loss,
            self.label_smoothing,
        )
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        loss = d_loss.detach()
        self._epoch_losses[0].add_(torch.stack([loss, torch.ones_like(loss)]))
        if (batch_idx + 1) % self.d_steps == 0:  # one generator step per d_steps discriminator steps
            with self.toggled_optimizer(g_opt):  # D's parameters need no gradient for this backward
                g_loss = generator_loss(self.discriminate(fake, fake_labels), self.loss)
                g_opt.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                g_opt.step()
            if self.generator_average is not None:
                self.generator_average.update()
            self.track_train_loss(g_loss)  # train/loss: the generator's
            self._epoch_losses[1].add_(torch.stack([g_loss.detach(), torch.ones_like(loss)]))
            loss = loss + g_loss.detach()
        return {"loss": loss}  # D + G loss: the divergence guard stops the run when either is not finite

    @override
    def on_train_epoch_start(self) -> None:
        # On-device (sum, count) of the D and the G losses, logged once per epoch: a per-step
        # self.log costs about a fifth of a digits GAN step.
        self._epoch_losses = torch.zeros(2, 2, device=self.device)

    @override
    def on_train_epoch_end(self) -> None:
        means = self._epoch_losses[:, 0] / self._epoch_losses[:, 1].clamp(min=1)
        self.log("train/d_loss", means[0], prog_bar=True)
        self.log("train/g_loss", means[1], prog_bar=True)
        if self.scheduler_factory is not None:  # manual optimization: the module steps its schedules
            for scheduler in self.lr_schedulers():
                scheduler.step()

    @override
    def configure_optimizers(self) -> Any:
        optimizers = [
            self.optimizer_factory(self.net.generator.parameters()),
            self.optimizer_factory(self.net.discriminator.parameters()),
        ]
        for group in optimizers[1].param_groups:  # before any scheduler records the initial LR
            group["lr"] *= self.d_lr_scale
        if self.scheduler_factory is None:
            return optimizers
        return optimizers, [self.scheduler_factory(opt) for opt in optimizers]

    # --- validation: val/fd on the fixed latent batch, and the sample grid ------------------------
    @override
    def on_fit_start(self) -> None:
        self.scores.move(self.device)

    @override
    def on_validation_start(self) -> None:
        self.scores.move(self.device)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.scores.add_real(batch[0], "val")

    @override
    def on_validation_epoch_end(self) -> None:
        rank, world = self.global_rank, self.trainer.world_size
        with self.averaged_generator():
            samples = self.sample(self.fixed_z[rank::world], self.fixed_labels[rank::world])  # each rank its share
            epoch = self.current_epoch
            if not self.trainer.sanity_checking and epoch % self.grid_every_n_epochs == 0:
                self.write_grid(Path(self.trainer.default_root_dir) / "samples" / f"epoch{epoch:04d}.png", step=epoch)
        self.log("val/fd", self.scores.val_fd_of(samples), prog_bar=True, sync_dist=False)

    def averaged_generator(self) -> AbstractContextManager[None]:
        """The generator with its averaged weights (when task.ema_decay > 0) for the block."""
        return self.generator_average.swapped_in() if self.generator_average is not None else nullcontext()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The checkpoint's generator is the averaged one (what is tested, exported and evaluated);
        # the trained weights and the average ride along for a resume.
        super().on_save_checkpoint(checkpoint)
        if self.generator_average is not None:
            self.generator_average.into_checkpoint(checkpoint, AVERAGE_KEY, f"{self.shipped_prefix()}.")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resume (trainer.fit(ckpt_path=...)) continues from the trained weights and their average.
        super().on_load_checkpoint(checkpoint)
        if self.generator_average is not None:
            self.generator_average.from_checkpoint(checkpoint, AVERAGE_KEY, f"{self.shipped_prefix()}.")

    def grid(self) -> torch.Tensor:
        """Samples of the fixed latent batch: 10 x 10 (one row per class when conditional)."""
        per_row = self.num_classes if self.conditional else 10
        n = min(len(self.fixed_z), per_row * 10)
        images = self.sample(self.fixed_z[:n], self.fixed_labels[:n])
        if self.conditional:  # labels cycle through the classes: sort so that each row is one class
            images = images[torch.argsort(self.fixed_labels[:n].cpu(), stable=True).to(images.device)]
            per_row = n // self.num_classes
        return sample_grid(images, per_row)

    def write_grid(self, path: Path, step: int) -> None:
        """Rank 0 saves the grid as PNG and hands it to TensorBoard when that logger is on."""
        if self.global_rank == 0:
            publish_grid(self.grid(), path, self.loggers, step)

    @override
    def on_fit_end(self) -> None:
        with self.averaged_generator():
            self.write_grid(Path(self.trainer.default_root_dir) / "samples.png", step=self.current_epoch)

    # --- test: test/fd, test/fd_real, test/class_coverage, test/cond_acc --------------------------
    @override
    def on_test_start(self) -> None:
        self.scores.move(self.device)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.scores.add_real(batch[0], "test")

    @override
    def on_test_epoch_end(self) -> None:
        z, labels = self.latent_batch(self.fd_samples, self.sample_seed + 1, self.device)
        samples = self.sample(z, labels)
        datamodule = self.trainer.datamodule
        datamodule.setup("fit")  # the training split is the floor's reference (a no-op once set up)
        training = (batch[0].to(self.device) for batch in DataLoader(datamodule.training_dataset(), batch_size=512))
        self.log_dict(self.scores.test_metrics(samples, labels, training, self.num_classes, self.conditional))
