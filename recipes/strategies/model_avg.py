"""Model averaging (post-local SGD): after `warmup_steps` synchronous DDP steps, each rank steps its
own replica on its own gradients with no communication, and every `period` optimizer steps the
replicas' parameters and floating buffers (BatchNorm running statistics) are averaged. A rank sends
about `period` times fewer bytes per step than under DDP.

Built on torch.distributed.algorithms: the post-localSGD DDP hook (global all-reduce during warm-up,
then none: `post_local_gradient_allreduce=False`) and a PeriodicModelAverager that also averages
buffers. The hook is registered on every device (recipes.strategies.ddp), unlike Lightning's
`model_averaging_period`, which on CPU silently trains plain DDP.

Checkpoints hold averaged weights: when the replicas differ (the last step was not an averaging
step), they are averaged once more right before validation and before a checkpoint is written, so
the validated, the saved and the shipped model are the same average. Steps per epoch divisible by
`period` make every epoch end an averaging point and this extra averaging never happens.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import PostLocalSGDState, post_localSGD_hook
from torch.distributed.algorithms.model_averaging import utils
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from typing_extensions import override

from recipes.strategies.ddp import DDPStrategy
from recipes.strategies.self_stepping import refuse_self_stepping

__all__ = ["ModelAveragingStrategy", "ReplicaAverager", "floating_buffers"]


def floating_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Buffers a checkpoint keeps that averaging makes sense for (BatchNorm running mean / var; not
    integer counters such as num_batches_tracked)."""
    saved = module.state_dict().keys()
    return [b for name, b in module.named_buffers() if name in saved and b.is_floating_point()]


class ReplicaAverager(PeriodicModelAverager):
    """torch's PeriodicModelAverager, averaging after every `period`-th local step (torch's averages
    right after the first one) and averaging `buffers` with the parameters in one all-reduce.

    `sent_bytes`: bytes of the flat tensors this rank all-reduced. `in_sync`: the last step averaged."""

    def __init__(self, period: int, warmup_steps: int, buffers: list[torch.Tensor]) -> None:
        super().__init__(period=period, warmup_steps=warmup_steps)
        self.buffers = buffers
        self.sent_bytes = 0
        self.in_sync = True

    def average_parameters(self, params: Any) -> None:
        """Called by Lightning's DDPStrategy after every optimizer step."""
        params = utils.get_params_to_average(params)
        local = self.step - self.warmup_steps + 1  # local steps taken, this one included
        if local >= 1 and local % self.period == 0:
            self.average(params)
        else:
            self.in_sync = False
        self.step += 1

    def average(self, params: list[torch.Tensor]) -> None:
        tensors = [*params, *self.buffers]
        utils.average_parameters(iter(tensors), self.process_group)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))  # of the flat tensor
        self.sent_bytes += sum(t.numel() for t in tensors) * dtype.itemsize
        self.in_sync = True


class ModelAveragingStrategy(DDPStrategy):
    """`strategy=model_avg strategy.period=K strategy.warmup_steps=W` (see conf/strategy/model_avg.yaml)."""

    @staticmethod
    @override
    def check_task(task: type) -> None:
        """The tasks this strategy serves, declared for start-up checks (recipes/assembly/startup_checks.py)."""
        refuse_self_stepping(task, "model_avg", "its local-SGD averaging wraps one optimizer step per batch")

    def __init__(self, period: int = 4, warmup_steps: int = 0, **kwargs: Any) -> None:
        if not isinstance(period, int) or period < 1:
            raise ValueError(
                f"strategy.period={period} must be an integer >= 1 (optimizer steps between "
                "averages), e.g. strategy.period=4"
            )
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                f"strategy.warmup_steps={warmup_steps} must be an integer >= 0 (synchronous steps "
                "before local SGD), e.g. strategy.warmup_steps=0"
            )
        # Each replica keeps its own BatchNorm statistics (averaged with the weights), instead of DDP
        # broadcasting rank 0's before every forward.
        kwargs.setdefault("broadcast_buffers", False)
        super().__init__(model_averaging_period=period, **kwargs)
        self.warmup_steps = warmup_steps

    @property
    @override
    def comm_bytes(self) -> int:
        averager = self._model_averager
        return self.hook_bytes + (averager.sent_bytes if isinstance(averager, ReplicaAverager) else 0)

    @override
    def configure_ddp(self) -> None:
        # The hook state is made here, once the process group exists; Lightning's setup sees it and
        # calls _enable_model_averaging after the optimizers are built.
        self._ddp_comm_state = PostLocalSGDState(
            process_group=None,
            subgroup=None,
            start_localSGD_iter=self.warmup_steps,
            post_local_gradient_allreduce=False,
        )
        self._ddp_comm_hook = post_localSGD_hook
        super().configure_ddp()

    @override
    def hook_sends(self, state: PostLocalSGDState) -> bool:
        return state.iter < state.start_localSGD_iter  # warm-up: global all-reduce; then nothing

    @override
    def _enable_model_averaging(self) -> None:
        super()._enable_model_averaging()  # Lightning's check that no optimizer is a distributed one
        self._model_averager = ReplicaAverager(
            self._model_averaging_period, self.warmup_steps, floating_buffers(self.lightning_module)
        )

    @override
    def on_train_start(self) -> None:
        """Resuming: continue the warm-up and averaging schedule from the restored step."""
        super().on_train_start()
        step = self.lightning_module.trainer.global_step
        if isinstance(self._model_averager, ReplicaAverager):
            self._model_averager.step = self._ddp_comm_state.iter = step

    @override
    def on_restructure(self) -> None:
        """A compression step changed layer shapes and configure_ddp ran again (callbacks/surgery/structure.py):
        average the new buffers, and keep the warm-up schedule where it was."""
        if isinstance(self._model_averager, ReplicaAverager):
            self._model_averager.buffers = floating_buffers(self.lightning_module)
        self._ddp_comm_state.iter = self.lightning_module.trainer.global_step

    def average_replicas(self) -> None:
        """Average now if the replicas differ (every rank calls this at the same points)."""
        averager = self._model_averager
        if isinstance(averager, ReplicaAverager) and not averager.in_sync:
            averager.average([p for p in self.lightning_module.parameters() if p.requires_grad])

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        self.average_replicas()  # validate the model the checkpoint will hold

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.average_replicas()
        return super().lightning_module_state_dict()
