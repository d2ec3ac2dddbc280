"""Asynchronous SGD (`strategy=async`): Hogwild! (Recht et al. 2011) within a machine, local SGD across machines
(recipes.strategies.async_nodes).

The module's parameters move to shared memory before the worker processes start (torch.multiprocessing,
via Lightning's own multiprocessing launcher, as recipes.strategies.hogwild_launcher starts and stops them:
from a fork server or by spawn, never forked from this process).

Each worker reads its DistributedSampler shard and runs its own optimizer straight on the shared parameters:
no DDP wrapper, no gradient all-reduce, no process group. A worker never waits for another while training,
so a slow worker slows only itself; the price is that workers compute gradients on weights that others are
changing (stale, lock-free updates). One worker (trainer.devices=1) is plain SGD on the node: allowed, since
one worker per node is the natural multi-node layout (local SGD between nodes).

Every place where Lightning would make ranks agree is rank-local here: `barrier` does nothing,
`broadcast` returns the caller's object, `reduce` (self.log(sync_dist=True)) returns the local value, and
with no process group torchmetrics does not sync either. Logged metrics are rank 0's, on rank 0's shard.
Only rank 0 writes files; its checkpoints hold the shared weights at the moment they are written.

The one wait is at the very end, for rank 0 (recipes.strategies.async_counts); results.json's `parallel`
section reports each worker's steps.

What crosses process boundaries on one node: nothing is sent. Workers write their updates in place into the
shared pages, so `comm_bytes` is 0 (no collective, no copy). Buffers (BatchNorm statistics) and metric states
stay private to each worker; rank 0's go into the checkpoint.

CPU only: GPU memory cannot be shared this way between processes of different devices, so another
accelerator or a precision that re-creates the parameters (16-true, bf16-true, 64-true) is a configuration
error, never a silent fallback. On GPUs use torchft (see the README).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.strategy import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from recipes.strategies.async_counts import WorkerCounts, training_over
from recipes.strategies.async_nodes import NodeAveraging
from recipes.strategies.contract import RecipeStrategy
from recipes.strategies.hogwild_launcher import HogwildLauncher
from recipes.strategies.self_stepping import refuse_self_stepping
from recipes.strategies.timeout import DEFAULT_SECONDS, DEFAULT_STARTUP_SECONDS, collective_timeout

__all__ = ["START_METHODS", "AsyncSGDStrategy"]

START_METHODS = ("forkserver", "spawn")


class AsyncSGDStrategy(NodeAveraging, WorkerCounts, DDPStrategy, RecipeStrategy):
    """Hogwild asynchronous SGD: N CPU worker processes updating one set of shared parameters.

    start_method: how workers start, forkserver (default: forked from a clean, warm server) or spawn (a new
    interpreter each); both pass the shared pages by pickling (spawn makes Lightning copy module tensors,
    so `setup` points the parameters back at the shared storage). fork is refused (see above).
    sync_every: with trainer.num_nodes > 1, the node updates (all its workers' optimizer steps) between
    two averages of the nodes' weights. Unused on one node.
    timeout / startup_timeout: seconds a node leader waits for the other leaders in an average / at start-up.
    """

    restructurable = False  # compression steps that change layer shapes mid-fit are refused at start-up

    @staticmethod
    @override
    def check_task(task: type) -> None:
        """The tasks this strategy serves, declared for start-up checks (recipes/assembly/startup_checks.py)."""
        refuse_self_stepping(task, "async", "its workers apply one optimizer step per batch to shared weights")

    def __init__(
        self,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        sync_every: int = 32,
        timeout: float | timedelta = DEFAULT_SECONDS,
        startup_timeout: float | timedelta = DEFAULT_STARTUP_SECONDS,
        **kwargs: Any,
    ) -> None:
        if start_method not in START_METHODS:
            why = (
                "fork deadlocks the workers once torch's thread pool runs in the main process"
                if start_method == "fork"
                else "popen would re-run the script: no shared memory"
            )
            raise ValueError(
                f"strategy.start_method={start_method} must be one of {', '.join(START_METHODS)} ({why}), "
                "e.g. strategy.start_method=forkserver"
            )
        if not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(
                f"strategy.sync_every={sync_every} must be an integer >= 1 (node updates between "
                "averages across nodes), e.g. strategy.sync_every=32"
            )
        self.startup_timeout = collective_timeout(startup_timeout, "startup_timeout")
        super().__init__(start_method=start_method, timeout=self.startup_timeout, **kwargs)
        self.collective_timeout = collective_timeout(timeout)
        self.sync_every = sync_every
        self._shared: list[Tensor] = []  # the parameters, in shared memory

    # --- processes and shared memory ---------------------------------------------------------------
    @override
    def _configure_launcher(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            raise ValueError(
                f"strategy=async shares parameters between CPU processes (Hogwild) and cannot run on "
                f"{type(self.accelerator).__name__}: set trainer.accelerator=cpu, or on GPUs "
                "use torchft (README: 'Asynchronous SGD across nodes')"
            )
        node_rank_set = "NODE_RANK" in os.environ or "GROUP_RANK" in os.environ  # set_world_ranks exports them
        if self.num_nodes > 1 and not ("MASTER_PORT" in os.environ and node_rank_set):  # under srun / torchrun
            raise ValueError(
                f"strategy=async with trainer.num_nodes={self.num_nodes} needs MASTER_ADDR, MASTER_PORT "
                "and NODE_RANK set on every node, e.g. MASTER_ADDR=node0 MASTER_PORT=29500 NODE_RANK=1"
            )
        precision = self.precision_plugin
        if type(precision) not in (Precision, MixedPrecision):
            raise ValueError(
                f"strategy=async needs parameters kept in their shared fp32 storage: use "
                f"trainer.precision=32-true or bf16-mixed, not {type(precision).__name__}"
            )
        self._launcher = HogwildLauncher(self, start_method=self._start_method)

    def share_parameters(self) -> None:
        """Move the parameters and the counters to shared memory (main process, before workers start)."""
        self._shared = [p.data.share_memory_() for p in self.lightning_module.parameters()]
        self.share_counters(self.num_nodes * self.num_processes, self._start_method)
        self.share_node_counts()

    @property
    @override
    def comm_bytes(self) -> int:
        """Bytes this node's leader sent averaging with the other nodes (0 on one node: nothing is sent)."""
        return 0 if self._comm is None else int(self._comm[0])

    @override
    def set_world_ranks(self) -> None:
        """torchrun (--nproc_per_node=1) and srun (--ntasks-per-node=1) start one process per node, which
        starts the node's workers itself: their ranks come from the node rank and the local rank, not from
        the launcher's RANK / SLURM_PROCID (one per node). So take the node rank and the leaders' meeting
        point from the launcher's environment, then count ranks as a self-launched run does."""
        env = self.cluster_environment
        if env is not None and env.creates_processes_externally and self.num_nodes > 1:
            os.environ.update(
                MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank())
            )
            self.cluster_environment = LightningEnvironment()
        super().set_world_ranks()

    @override
    def setup_distributed(self) -> None:
        """Ranks and seed as DDP sets them, but no process group: nothing may make workers wait."""
        reset_seed()
        self.set_world_ranks()
        self.connect_leaders()

    @override
    def setup(self, trainer: Any) -> None:
        # Strategy.setup, not DDPStrategy's: the module is not wrapped in DistributedDataParallel.
        # Every worker validates on the whole validation set: nothing syncs the metric across workers,
        # and rank 0's val/acc on half the set made its best-checkpoint choice noisy. (The recipes' data
        # modules shard the training set themselves, by trainer.distributed_sampler_kwargs.)
        trainer._accelerator_connector.use_distributed_sampler = False
        self._attach_shared()
        Strategy.setup(self, trainer)
        self._attach_shared()

    def _attach_shared(self) -> None:
        """Point every parameter at its shared storage (spawn copies module tensors) and check it is there."""
        params = list(self.lightning_module.parameters())
        if len(params) != len(self._shared):
            raise RuntimeError("strategy=async: the module's parameters changed after they were shared")
        for param, shared in zip(params, self._shared):
            if param.data_ptr() != shared.data_ptr():
                if param.shape != shared.shape or param.dtype != shared.dtype:
                    raise RuntimeError(
                        f"strategy=async: a parameter became {param.dtype} {tuple(param.shape)} "
                        f"after sharing ({shared.dtype} {tuple(shared.shape)})"
                    )
                param.data = shared

    @override
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # no DDP wrapper: gradients are never all-reduced

    # --- every synchronisation point is rank-local ---------------------------------------------------
    @override
    def barrier(self, *args: Any, **kwargs: Any) -> None:
        """Workers never wait for each other while training."""

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    @override
    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        return tensor  # the local value: a collective would make the fast worker wait for the slow one

    @override
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision  # this rank's (checkpoint, early stop); the parent compares a sum with world_size

    # --- step accounting --------------------------------------------------------------------------
    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        self.count_step()
        self.average_when_due()
        return output

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self.plan_rounds(self.lightning_module.trainer.estimated_stepping_batches)

    @override
    def on_validation_start(self) -> None:
        trainer = self.lightning_module.trainer
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and training_over(trainer):
            self._training_done()

    @override
    def on_train_end(self) -> None:
        self._training_done()  # when no validation ran after the last step (or early stopping ended it)

    def _training_done(self) -> None:
        """This worker's last update is made: counts, rank 0's wait, then its node's last averages."""
        if self.finish_training():
            self.finish_rounds()

    @property
    @override
    def parallel_extra(self) -> dict[str, Any]:
        """For results.json's `parallel` section, read in the main process after fit: the workers' counts
        (the steps all nodes' workers applied) and, across nodes, the averages made (the final one included)."""
        return {**self.worker_extra(), **self.node_extra()}

    @override
    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        # Resuming: each node's local rank 0 restores its shared weights; another worker loading too could
        # overwrite updates that it has already made (nobody waits for the load to finish).
        if self.local_rank == 0:
            super().load_model_state_dict(checkpoint, strict=strict)
