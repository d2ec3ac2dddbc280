"""Asynchronous SGD (`strategy=async`): Hogwild! (Recht et al. 2011) within a machine, local SGD across machines.

The module's parameters move to shared memory before the worker processes start (torch.multiprocessing,
via Lightning's own multiprocessing launcher). Workers never fork from the main process: by then torch has
run kernels there and started its OpenMP intra-op thread pool, and a forked child that enters a parallel
region waits forever for pool threads that do not exist in it (a 0%-CPU hang, seen with one worker per
node, or whenever a worker gets more than one thread). A fork server, started fresh and importing only
code, forks them instead (or spawn starts them), so every worker builds its own pool.

Each worker reads its DistributedSampler shard and runs its own optimizer straight on the shared parameters:
no DDP wrapper, no gradient all-reduce, no process group. A worker never waits for another while training,
so a slow worker slows only itself; the price is that workers compute gradients on weights that others are
changing (stale, lock-free updates). One worker (trainer.devices=1) is plain SGD on the node: allowed, since
one worker per node is the natural multi-node layout (local SGD between nodes).

Every place where Lightning would make ranks agree is rank-local here: `barrier` does nothing,
`broadcast` returns the caller's object, `reduce` (self.log(sync_dist=True)) returns the local value, and
with no process group torchmetrics does not sync either. Logged metrics are rank 0's, on rank 0's shard.
Only rank 0 writes files; its checkpoints hold the shared weights at the moment they are written.

The one wait is at the very end: when rank 0 has made its last update, it waits (a semaphore that each
other worker releases after its own last update) before its final validation and checkpoint, so that these
hold every worker's updates. No other worker ever waits. results.json's `parallel` section reports each
worker's steps, all counts at the moment the first worker finished, and rank 0's final wait.

What crosses process boundaries on one node: nothing is sent. Workers write their updates in place into the
shared pages, so `comm_bytes` is 0 (no collective, no copy). Buffers (BatchNorm statistics) and metric states
stay private to each worker; rank 0's go into the checkpoint.

Across nodes (trainer.num_nodes=N > 1): local SGD between the nodes' shared weights. Each node runs the above
on its own shared copy; the global rank of a worker is node_rank * devices + local_rank, so the N * devices
workers read disjoint shards. Every `sync_every` optimizer updates of the node (all its workers' steps
counted together), the node's local-rank-0 worker (its leader) averages the node's weights with the other
leaders' (one gloo all-reduce over a process group of the N leaders only, built from MASTER_ADDR, MASTER_PORT
and NODE_RANK) while the node's other workers keep stepping; it then adds (average - what it sent), so those
concurrent updates are kept. Every leader makes the same number of rounds, fixed before training from the
node's planned update count (devices * estimated_stepping_batches): rounds a leader has not reached when its
own training ends are made then, after its node's workers are done, followed by one final average, so that
all nodes end with identical weights before global rank 0's final validation and checkpoint. The leaders'
group is not torch.distributed's default group: with that one initialized, torchmetrics and Lightning would
sync metrics over it at points where the leaders are not in step. `comm_bytes` counts the bytes a leader
sends: the flat parameters per round, plus the per-worker step counts gathered once at the end.

Stopping: no worker outlives the run. SIGTERM to the main process (which trains nothing; it waits for the
workers) sets a shared flag; a thread in each worker watches the flag and the main process, and sends its
worker SIGTERM when the flag is set or the main process has died (kill -9), so that every worker stops at its
next batch end as SIGTERM makes any rank stop (recipes/runtime/interrupt.py: the resume point is last.ckpt from the
last epoch end, no checkpoint is written on the way out). A worker stopped by SIGTERM exits 143; the main
process then stops the others, waits until every worker has exited (it holds the run-dir lock until it exits)
and ends with the one line and exit 143 of any SIGTERM stop. A worker that dies otherwise (kill -9, a crash)
ends the run in one line, exit 1. A worker's parent is the fork server, which outlives a killed main process,
so torch's parent-death signal (SIGINT, mid-batch) is turned off in favour of the watcher.

CPU only: GPU memory cannot be shared this way between processes of different devices, so another
accelerator or a precision that re-creates the parameters (16-true, bf16-true, 64-true) is a configuration
error, never a silent fallback. On GPUs use torchft (see the README).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.strategies.strategy import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.multiprocessing import _prctl_pr_set_pdeathsig
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException
from torch.optim import Optimizer
from typing_extensions import override

from recipes.errors import EXIT_SIGTERM, RunStopped
from recipes.runtime.interrupt import how_to_go_on, sigterm_noted, stopped, stopped_by_sigterm
from recipes.strategies import refuse_self_stepping
from recipes.strategies.timeout import DEFAULT_SECONDS, DEFAULT_STARTUP_SECONDS, collective_timeout

START_METHODS = ("forkserver", "spawn")
_REASON_BYTES = 4096  # room for a worker's one-line reason (a RunStopped message, its remedy)
_REMEDY_MARK = "\x1f"  # between a reason and what to do about it (CheckpointWriteError.remedy)


class _HogwildLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher, with the parameters in shared memory before workers start, and
    every worker stopped with the main process (see the module's "Stopping")."""

    @override
    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self._strategy.share_parameters()
        if self._start_method == "forkserver":
            mp.set_forkserver_preload(_preload_modules())
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        if not any(isinstance(f, _DropStopNotice) for f in spawn_log.filters):
            spawn_log.addFilter(_DropStopNotice())
        self._main_pid = os.getpid()
        self._stop = torch.zeros((), dtype=torch.bool).share_memory_()  # set on SIGTERM: every worker stops
        # a worker's own one-line reason for stopping (a RunStopped: diverged, a checkpoint it could not write)
        self._reasons = torch.zeros((self._strategy.num_processes, _REASON_BYTES), dtype=torch.uint8).share_memory_()
        in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
        previous = signal.signal(signal.SIGTERM, self._stop_workers) if in_main_thread else None
        try:
            # torch's join: once a worker exits non-zero, the others get SIGTERM (SIGKILL 30 s later) and
            # are all reaped before ProcessExitedException / ProcessRaisedException reaches here.
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except ProcessException as err:
            raise self._one_line(err) from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _stop_workers(self, signum: int, frame: Any) -> None:
        """The main process's SIGTERM handler: the flag reaches every worker, one still starting included."""
        self._stop.fill_(True)

    def _one_line(self, err: ProcessException) -> BaseException:
        """What ends the run when a worker did not finish: exit 143 when SIGTERM stopped it (sent to the main
        process, to that worker, or to the whole process group), one line and exit 1 when it died, else the
        worker's own error (which carries its traceback)."""
        exited = isinstance(err, ProcessExitedException)
        if bool(self._stop) or (exited and err.exit_code in (EXIT_SIGTERM, -signal.SIGTERM)):
            return stopped_by_sigterm(self._strategy.epoch_in_progress)
        if not exited:
            return err
        reason = bytes(self._reasons[err.error_index].tolist()).rstrip(b"\0").decode(errors="replace")
        if reason:  # the worker's own RunStopped: its line, and how to go on where it names a fix
            message, _, remedy = reason.partition(_REMEDY_MARK)
            return RunStopped(f"{message}: {how_to_go_on(remedy)}" if remedy else message, err.exit_code)
        how = f"was killed by {err.signal_name}" if err.exit_code < 0 else f"exited with status {err.exit_code}"
        return stopped(
            f"async worker {err.error_index} (pid {err.error_pid}) {how} during epoch "
            f"{self._strategy.epoch_in_progress}, so the other workers were stopped"
        )

    @override
    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        """A worker: watch the main process, and exit 143 (not Lightning's 0) when SIGTERM stopped it."""
        _prctl_pr_set_pdeathsig(0)  # torch's SIGINT on the fork server's death: see the watcher instead
        threading.Thread(target=_watch_main_process, args=(self._main_pid, self._stop), daemon=True).start()
        try:
            super()._wrapping_function(process_idx, *args, **kwargs)
        except SIGTERMException:
            sys.exit(EXIT_SIGTERM)
        except RunStopped as err:  # told to the main process, which prints the run's one line
            remedy = getattr(err, "remedy", "")
            text = (f"{err}{_REMEDY_MARK}{remedy}" if remedy else str(err)).encode()[: _REASON_BYTES - 1]
            self._reasons[process_idx, : len(text)] = torch.tensor(list(text), dtype=torch.uint8)
            sys.exit(err.exit_code)


class _DropStopNotice(logging.Filter):
    """torch logs a warning for each worker it stops after another one exited: that is how every stop
    goes here, and the run's one line says why; its SIGKILL warning (a worker that did not stop) stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Terminating process")


def _watch_main_process(pid: int, stop: Tensor, every: float = 0.2) -> None:
    """A worker's daemon thread: SIGTERM to its own worker once the main process asks every worker to stop
    (it got SIGTERM) or has died (kill -9: it can ask nothing), so that the worker stops at its next batch end,
    as SIGTERM makes any rank stop, or exits at once when it has not started training yet."""
    gone = _exit_check(pid)
    while not (bool(stop) or gone(every)):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_check(pid: int) -> Callable[[float], bool]:
    """A function that waits up to its argument's seconds and says whether process `pid` has exited: a pidfd
    (Linux) tells of the exit itself, a zombie included; elsewhere, whether the pid is still there."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return lambda seconds: True
    except (AttributeError, OSError):  # no pidfd: not Linux, or a kernel before 5.3
        return lambda seconds: time.sleep(seconds) or not _pid_exists(pid)
    return lambda seconds: bool(select.select([fd], [], [], seconds)[0])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AsyncSGDStrategy(DDPStrategy):
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
        self._leaders: Any = None  # the node leaders' gloo group (this node's local rank 0, num_nodes > 1)
        self._rounds = 0  # averages across nodes each leader makes during fit, the final one excluded
        self._comm: Tensor | None = None  # [bytes sent by this node's leader, averages made], shared memory
        self._shared: list[Tensor] = []
        self._steps: Tensor | None = None  # [world] optimizer steps per worker, in shared memory
        self._steps_at_finish: Tensor | None = None  # [world, world] row r: all counts when worker r finished
        self._finished_at: Tensor | None = None  # [world] wall time each worker finished training
        self._final_wait: Tensor | None = None  # seconds rank 0 waited for the others at the end
        self._others_done: Any = None  # a multiprocessing Semaphore: see _training_done
        self._epoch: Tensor | None = None  # [] the epoch local rank 0 trains, in shared memory, for the main process
        self._marked_done = False

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
        self._launcher = _HogwildLauncher(self, start_method=self._start_method)

    def share_parameters(self) -> None:
        """Move the parameters and the step counters to shared memory (main process, before workers start)."""
        world = self.num_nodes * self.num_processes
        self._shared = [p.data.share_memory_() for p in self.lightning_module.parameters()]
        self._steps = torch.zeros(world, dtype=torch.long).share_memory_()
        self._steps_at_finish = torch.zeros(world, world, dtype=torch.long).share_memory_()
        self._finished_at = torch.full((world,), float("inf"), dtype=torch.float64).share_memory_()
        self._final_wait = torch.zeros((), dtype=torch.float64).share_memory_()
        # Released once by every other worker when its training is over; rank 0 takes them all before its
        # final validation and checkpoint. No other worker ever waits.
        self._others_done = mp.get_context(self._start_method).Semaphore(0)
        self._comm = torch.zeros(2, dtype=torch.long).share_memory_()
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()  # local rank 0's epoch in progress

    @property
    def epoch_in_progress(self) -> int:
        """The epoch this node's local rank 0 was training (read by the main process when a worker stops)."""
        return 0 if self._epoch is None else int(self._epoch)

    @property
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
        if self.num_nodes > 1 and self.local_rank == 0:
            env = self.cluster_environment
            store = dist.TCPStore(
                env.main_address, env.main_port, self.num_nodes, self.node_rank == 0, timeout=self.startup_timeout
            )
            self._leaders = dist.ProcessGroupGloo(
                dist.PrefixStore("async_sgd_leaders", store), self.node_rank, self.num_nodes, self.collective_timeout
            )

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
        self._steps[self.global_rank] += 1
        if self.local_rank == 0:
            self._epoch.fill_(self.lightning_module.trainer.current_epoch)
        if (
            self._leaders is not None
            and self._comm[1] < self._rounds
            and self._node_steps() >= self.sync_every * (int(self._comm[1]) + 1)
        ):
            self._average()
        return output

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        # Every node plans the same update count (equal shards, same epochs), hence the same rounds.
        planned = self.lightning_module.trainer.estimated_stepping_batches
        if self.num_nodes > 1 and planned == float("inf"):
            raise ValueError(
                "strategy=async across nodes needs a known length to schedule its averages: set "
                "trainer.max_epochs or trainer.max_steps, e.g. trainer.max_epochs=10"
            )
        self._rounds = 0 if self.num_nodes == 1 else self.num_processes * int(planned) // self.sync_every

    def _node_steps(self) -> int:
        first = self.node_rank * self.num_processes
        return int(self._steps[first : first + self.num_processes].sum())

    def _all_reduce_sum(self, tensor: Tensor) -> Tensor:
        self._leaders.allreduce([tensor]).wait()  # ReduceOp.SUM
        self._comm[0] += tensor.numel() * tensor.element_size()
        return tensor

    def _average(self, final: bool = False) -> None:
        """One round: average the node's shared weights with the other nodes'. During training this node's
        other workers keep stepping meanwhile; adding (average - sent) keeps their updates. The final round
        (all workers done) copies the average, so every node ends bit-identical."""
        sent = torch.cat([p.detach().reshape(-1) for p in self._shared])
        mean = self._all_reduce_sum(sent.clone()).div_(self.num_nodes)
        offset = 0
        with torch.no_grad():
            for param in self._shared:
                new = mean[offset : offset + param.numel()].view_as(param)
                if final:
                    param.copy_(new)
                else:
                    param.add_(new - sent[offset : offset + param.numel()].view_as(param))
                offset += param.numel()
        self._comm[1] += 1

    @override
    def on_validation_start(self) -> None:
        trainer = self.lightning_module.trainer
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and _training_over(trainer):
            self._training_done()

    @override
    def on_train_end(self) -> None:
        self._training_done()  # when no validation ran after the last step (or early stopping ended it)

    def _training_done(self) -> None:
        """This worker has made its last update: record the counts; rank 0 then waits for every other
        worker, so that its final validation and checkpoint hold all the workers' updates."""
        if self._marked_done:
            return
        self._marked_done = True
        rank = self.global_rank
        self._steps_at_finish[rank] = self._steps
        self._finished_at[rank] = time.time()
        if self.local_rank != 0:
            self._others_done.release()
            return
        start, waiting = time.perf_counter(), self.num_processes - 1
        while waiting:
            if self._others_done.acquire(timeout=0.2):
                waiting -= 1
            elif sigterm_noted(self.lightning_module.trainer):  # a worker stopped or died: it will never release
                raise SIGTERMException
        self._final_wait.fill_(time.perf_counter() - start)
        if self._leaders is not None:
            while self._comm[1] < self._rounds:  # rounds this leader had not reached: same count on every node
                self._average()
            self._average(final=True)
            self._steps.copy_(self._all_reduce_sum(self._steps.clone()))  # every worker's count, all nodes

    @property
    def parallel_extra(self) -> dict[str, Any]:
        """For results.json's `parallel` section, read in the main process after fit: the optimizer steps
        each worker applied to the shared weights (all nodes'), every worker of this node's count at the
        moment its first one finished, how long rank 0 waited at the end for the others and, across nodes,
        the averages made (the final one included)."""
        if self._steps is None:
            return {}
        first = int(self._finished_at.argmin())
        extra = {
            "worker_steps": self._steps.tolist(),
            "worker_steps_at_first_finish": self._steps_at_finish[first].tolist(),
            "final_wait_seconds": round(float(self._final_wait), 3),
        }
        if self.num_nodes > 1:
            extra.update(nodes=self.num_nodes, sync_every=self.sync_every, node_averages=int(self._comm[1]))
        return extra

    @override
    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        # Resuming: each node's local rank 0 restores its shared weights; another worker loading too could
        # overwrite updates that it has already made (nobody waits for the load to finish).
        if self.local_rank == 0:
            super().load_model_state_dict(checkpoint, strict=strict)


def _training_over(trainer: Any) -> bool:
    """Whether the batch just trained was this worker's last of the whole fit (max_steps or last epoch)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    steps_done = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return steps_done or (last_epoch and epoch_loop._num_ready_batches_reached())


def _preload_modules() -> list[str]:
    """What the fork server imports once, so that each worker it forks starts warm instead of importing torch,
    Lightning and the recipe again: Lightning and the modules of the script's package loaded so far (for
    `python -m recipes.train`, every recipes.* module but recipes.train itself, which each worker runs as its
    __mp_main__). Importing runs no torch kernel, so the server never starts the intra-op thread pool that
    forking would break; each worker starts its own."""
    main = getattr(sys.modules["__main__"], "__spec__", None)
    if main is None or not main.name:
        return ["lightning.pytorch"]
    package = main.name.partition(".")[0]
    return [
        "lightning.pytorch",
        *(name for name in list(sys.modules) if name.partition(".")[0] == package and name != main.name),
    ]
