"""Dense-sparse-dense: each layer sparse during the sparse phase, masks lifted with the pruned
weights restarting at zero and the learning rate lowered in the re-dense phase, dense at the end."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.dsd import DenseSparseDense
from callbacks.prune import prunable, weight_sparsity
from modules.classifier import ClassifierModule
from modules.nets.mlp import MLP
from recipes.data.digits import DigitsDataModule
from tests.helpers.build import quiet_trainer


class PhaseProbe(Callback):
    """Sparsity and learning rate at the end of each epoch, and the re-dense epoch's starting weights."""

    def __init__(self) -> None:
        self.sparsity: list[float] = []
        self.lr: list[float] = []
        self.redense_start: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            self.redense_start = [m.weight_orig.detach().clone() for m, _ in prunable(pl_module.net)]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sparsity.append(weight_sparsity(pl_module.net))
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_dense_sparse_dense_phases() -> None:
    pl.seed_everything(0)
    net = MLP((1, 8, 8), 10, hidden=[32])
    dsd = DenseSparseDense(sparsity=0.5, sparse_epoch=1, redense_epoch=2, redense_lr_scale=0.1)
    probe = PhaseProbe()
    module = ClassifierModule(net, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    trainer = quiet_trainer(
        max_epochs=4,
        callbacks=[dsd, probe],
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=128))
    assert probe.sparsity[0] == 0 and probe.sparsity[1] == pytest.approx(0.5, abs=0.01)  # dense, then sparse
    zeros_at_redense = sum(int((w == 0).sum()) for w in probe.redense_start)
    assert zeros_at_redense >= 0.49 * sum(w.numel() for w in probe.redense_start)  # pruned weights restart at 0
    # they trained again (all but the weights of always-blank border pixels, whose gradient is 0)
    assert probe.sparsity[3] < 0.1
    assert probe.lr[2] == pytest.approx(0.1 * probe.lr[1]) == pytest.approx(0.001)
    assert dsd.before is not None and trainer.callback_metrics["val/acc"] > 0.7
