"""Pipeline model parallelism (`strategy=pipeline`) on `torch.distributed.pipelining`: the net's
top-level blocks are cut into one stage per rank; every rank loads the same batch, cuts it into
micro-batches, and a GPipe or 1F1B schedule runs their forward and backward passes across the stages.

How it fits Lightning's automatic optimization (which runs training_step, zero_grad, backward, step):
the schedule already did forward and backward inside training_step, so the stage's gradients are
taken out of `.grad` and handed back through the returned loss (`_StageGrads`): Lightning's zero_grad,
backward (with loss scaling, gradient accumulation and clipping) and optimizer step then work as usual.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.optimizer import _optimizer_to_device
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from typing_extensions import override

from modules.task import Task
from recipes.errors import RecipeError
from recipes.strategies import pipeline_stages as stages
from recipes.strategies.timeout import DEFAULT_SECONDS, DEFAULT_STARTUP_SECONDS, TimedDDPStrategy

__all__ = ["PipelineStrategy", "SCHEDULES", "plain_optimizer"]

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def plain_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's LightningOptimizer wrapper (or `optimizer` itself)."""
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


class _StageGrads(torch.autograd.Function):
    """The loss value, whose backward delivers gradients that the pipeline schedule computed."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, grads: list[torch.Tensor | None], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, *(None if g is None else g * grad_loss for g in ctx.grads))


class PipelineStrategy(TimedDDPStrategy):
    """One pipeline stage per rank; data parallelism degree 1 (every rank sees the same batches).

    A batch of n samples is cut into `microbatches` pieces of ceil(n/M) samples; a shortfall (a last,
    ragged batch) is filled with repeated samples whose target is -1 and loss weight 0, so every step's loss and
    gradients are those of the whole batch's mean loss. Weights of all stages are gathered onto every
    rank before validation, at each checkpoint and at the end of fit, so checkpoints hold the whole
    net (`net.*` keys) and validation runs the module's own validation_step on the gathered net.
    """

    restructurable = False  # compression steps that change layer shapes mid-fit are refused at start-up
    splits_net = True  # each rank runs one stage: compression steps that couple layers are refused at start-up

    def __init__(
        self,
        microbatches: int = 4,
        schedule: str = "1f1b",
        split_points: list[int] | None = None,
        process_group_backend: str | None = None,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        timeout: float | timedelta = DEFAULT_SECONDS,
        startup_timeout: float | timedelta = DEFAULT_STARTUP_SECONDS,
    ) -> None:
        if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
            raise ValueError(
                f"strategy.microbatches={microbatches} must be an integer >= 1, e.g. strategy.microbatches=4"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"strategy.schedule={schedule!r} must be one of {', '.join(SCHEDULES)}, e.g. strategy.schedule=1f1b"
            )
        super().__init__(
            process_group_backend=process_group_backend,
            start_method=start_method,
            timeout=timeout,
            startup_timeout=startup_timeout,
        )
        self.microbatches, self.schedule_name = microbatches, schedule
        self.split_points = stages.check_split_points(split_points)
        self.comm_bytes = 0  # bytes this rank sent: activations, activation gradients, loss, weight gathers
        self._schedules: dict[int, Any] = {}

    # --- launch-time checks (run while the Trainer is built, before any process starts) ----------
    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        world = self.num_processes * self.num_nodes
        if self.split_points is not None and len(self.split_points) != world - 1:
            raise ValueError(
                f"strategy.split_points={self.split_points} must hold {world - 1} indices for "
                f"{world} ranks (one stage per rank), e.g. strategy.split_points=null"
            )
        if self.schedule_name == "1f1b" and self.microbatches < world:
            raise ValueError(
                f"strategy.microbatches={self.microbatches} must be >= the {world} stages for "
                f"strategy.schedule=1f1b, e.g. strategy.microbatches={max(4, world)}"
            )

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": 1, "rank": 0}  # pipeline: all ranks work on the same batch

    # --- setup: cut the net, build the stage, keep only its parameters in the optimizer -----------
    @override
    def configure_ddp(self) -> None:
        """Called by DDPStrategy.setup when fitting, where DDP would wrap the model."""
        module = self.lightning_module
        try:  # known only now, on every rank: one line each, no traceback
            self.full_net = self._check_module(module)
            self.bounds = stages.stage_bounds(self.full_net, self.split_points, self.world_size)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        rank = self.global_rank
        self.comm_bytes += stages.broadcast_tensors([*self.full_net.parameters(), *self.full_net.buffers()], src=0)
        # The schedule's point-to-point waits (activations forward, gradients back) time out with the
        # connections of their group, whose timeout gloo fixes when the group is made (set_timeout reaches
        # collectives only): on the default group a stopped rank would hold the others for the start-up
        # timeout. The stages talk over a group made with strategy.timeout instead.
        self.p2p_group = dist.new_group(timeout=self.collective_timeout)
        self.stage_module = stages.stage_block(self.full_net, self.bounds[rank])
        self.is_first, self.is_last = rank == 0, rank == self.world_size - 1
        self.stage_module.register_forward_hook(self._count_activation_bytes)
        self._names = {id(p): name for name, p in module.named_parameters()}
        self._schedules.clear()

    @staticmethod
    @override
    def check_task(task: type) -> None:
        """The tasks this strategy serves (those that declare Task.pipelines), declared for start-up checks
        (recipes/assembly/startup_checks.py), which run before any prerequisite model trains."""
        if not (isinstance(task, type) and issubclass(task, Task) and task.pipelines):
            raise ValueError(
                f"strategy=pipeline trains a module whose training_step is loss_fn(net(x), y) with an "
                f"nn.Sequential net (task=classifier); {task.__name__} is not one"
            )

    @classmethod
    def _check_module(cls, module: pl.LightningModule) -> nn.Sequential:
        cls.check_task(type(module))  # a Task that declares `pipelines`: its shipped net and loss_fn
        net, loss_fn = module.shipped_net, getattr(module, "loss_fn", None)
        if not isinstance(net, nn.Sequential) or not callable(loss_fn):
            raise ValueError(
                f"strategy=pipeline trains a module whose training_step is loss_fn(net(x), y) with an "
                f"nn.Sequential net (task=classifier); {type(module).__name__} is not one"
            )
        return net

    @override
    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)
        mine = {id(p) for p in self.stage_module.parameters()}
        self._layouts = [stages.full_layout(opt, self._names) for opt in self.optimizers]
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) in mine]

    # --- the training step -------------------------------------------------------------------------
    def _schedule(self, size: int) -> Any:
        """The schedule for micro-batches of `size` samples (a stage fixes its shapes on first use)."""
        if size not in self._schedules:
            stage = PipelineStage(
                self.stage_module, self.global_rank, self.world_size, self.root_device, group=self.p2p_group
            )
            self._schedules[size] = SCHEDULES[self.schedule_name](
                stage, self.microbatches, loss_fn=self._microbatch_loss, scale_grads=False
            )
        return self._schedules[size]

    def _check_peers(self) -> None:
        """A one-byte broadcast on the default group before the schedule runs. Lightning's per-batch SIGTERM
        broadcast, just before, swallows its timeout when a rank stopped between steps; gloo closes the
        connection it timed out on, so this usually fails at once there (a loaded machine has seen it wait
        one timeout more), instead of the schedule waiting on the stages' own connections (p2p_group)."""
        alive = torch.ones(1, dtype=torch.uint8, device=self.root_device)
        dist.broadcast(alive, src=0)
        if self.is_first:
            self.comm_bytes += alive.element_size()

    def _microbatch_loss(self, output: torch.Tensor, target: torch.Tensor, batch: int, padded: bool) -> torch.Tensor:
        """This micro-batch's share of the mean loss over the batch's `batch` real samples: the shares
        of all micro-batches sum to it. Padding rows (target -1, only in a ragged batch) get none."""
        if not padded:  # the usual case: no host-device sync
            return self.lightning_module.loss_fn(output, target) * (len(target) / batch)
        keep = target >= 0
        kept = int(keep.sum())
        if kept == 0:
            return output.sum() * 0.0
        return self.lightning_module.loss_fn(output[keep], target[keep]) * (kept / batch)

    def _count_activation_bytes(self, _: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.lightning_module.training:
            return
        if not self.is_last:  # activations sent forward
            self.comm_bytes += output.numel() * output.element_size()
        if not self.is_first:  # gradients of the received activations sent back
            self.comm_bytes += sum(t.numel() * t.element_size() for t in inputs)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch = args[0] if args else kwargs["batch"]
        x, y = batch[0], batch[1]
        n, m = len(y), self.microbatches
        size = -(-n // m)
        if size * m != n:  # pad with repeated samples; target -1 gives them no loss weight
            index = torch.arange(size * m, device=y.device)
            x, y = x[index % n], torch.where(index < n, y[index % n], -1)
        schedule = self._schedule(size)
        self._check_peers()
        # The schedule accumulates into .grad: set aside what is there (Lightning's zero_grad, which
        # runs after this step, decides whether it stays), so only this batch's gradients are taken.
        params = [p for p in self.stage_module.parameters() if p.requires_grad]
        earlier = [p.grad for p in params]
        for p in params:
            p.grad = None
        losses: list[torch.Tensor] = []
        with self.precision_plugin.train_step_context():
            schedule.step(
                arg_mbs=[(c,) for c in x.split(size)] if self.is_first else None,
                target_mbs=list(y.split(size)) if self.is_last else None,
                losses=losses if self.is_last else None,
                return_outputs=False,
                loss_kwargs={"batch": n, "padded": size * m != n},
            )
        loss = torch.stack(losses).sum().detach().float() if self.is_last else torch.zeros((), device=self.root_device)
        dist.broadcast(loss, src=self.world_size - 1)
        if self.is_last:
            self.comm_bytes += loss.element_size()
        grads = [p.grad for p in params]
        for p, grad in zip(params, earlier):
            p.grad = grad
        out = _StageGrads.apply(loss, grads, *params)
        if not out.requires_grad:  # a stage without trainable weights: nothing to deliver
            out.requires_grad_()
        self.lightning_module.track_train_loss(out)  # a Task (check_task): train/loss as its own step logs it
        return out

    # --- the whole net where it is needed ------------------------------------------------------------
    def gather(self) -> None:
        """Every rank's net gets every stage's current weights."""
        self.comm_bytes += stages.gather_stages(self.full_net, self.bounds)

    @override
    def on_validation_start(self) -> None:
        if self.lightning_module.trainer.state.fn == TrainerFn.FITTING:
            self.gather()
        super().on_validation_start()

    @override
    def on_train_end(self) -> None:
        self.gather()
        super().on_train_end()

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Called on every rank by trainer.save_checkpoint: gather, then the whole module's state."""
        self.gather()
        return super().lightning_module_state_dict()

    @override
    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        optimizer = plain_optimizer(optimizer)
        layout = self._layouts[[plain_optimizer(o) for o in self.optimizers].index(optimizer)]
        return stages.gather_optimizer_state(optimizer, self._names, layout)

    @override
    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        for optimizer, layout, state in zip(self.optimizers, self._layouts, checkpoint["optimizer_states"]):
            optimizer.load_state_dict(stages.local_optimizer_state(state, optimizer, self._names, layout))
            _optimizer_to_device(optimizer, self.root_device)
