"""Local SGD between the nodes of strategy=async (recipes.strategies.async_sgd), trainer.num_nodes=N > 1.

Each node runs Hogwild on its own shared copy of the weights; the global rank of a worker is
node_rank * devices + local_rank, so the N * devices workers read disjoint shards. Every `sync_every`
optimizer updates of the node (all its workers' steps counted together), the node's local-rank-0 worker (its
leader) averages the node's weights with the other leaders' (one gloo all-reduce over a process group of the
N leaders only, built from MASTER_ADDR, MASTER_PORT and NODE_RANK) while the node's other workers keep
stepping; it then adds (average - what it sent), so those concurrent updates are kept. Every leader makes the
same number of rounds, fixed before training from the node's planned update count (devices *
estimated_stepping_batches): rounds a leader has not reached when its own training ends are made then, after
its node's workers are done, followed by one final average, so that all nodes end with identical weights
before global rank 0's final validation and checkpoint. The leaders' group is not torch.distributed's default
group: with that one initialized, torchmetrics and Lightning would sync metrics over it at points where the
leaders are not in step. `comm_bytes` counts the bytes a leader sends: the flat parameters per round, plus the
per-worker step counts gathered once at the end.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["NodeAveraging"]


class NodeAveraging:
    """Mixin of AsyncSGDStrategy: the node leaders' averages. It reads the strategy's ranks (num_nodes,
    num_processes, node_rank, local_rank, cluster_environment), `sync_every`, its timeouts, and the shared
    tensors its `share_parameters` makes: `_shared` (the parameters) and `_steps` (optimizer steps per
    worker, recipes.strategies.async_counts)."""

    _leaders: Any = None  # the node leaders' gloo group (this node's local rank 0, num_nodes > 1)
    _rounds = 0  # averages across nodes each leader makes during fit, the final one excluded
    _comm: Tensor | None = None  # [bytes sent by this node's leader, averages made], in shared memory

    def share_node_counts(self) -> None:
        """`_comm` in shared memory (main process, before workers start): the main process reports it."""
        self._comm = torch.zeros(2, dtype=torch.long).share_memory_()

    def connect_leaders(self) -> None:
        """In each worker, once its ranks are set: a node's leader joins the other nodes' leaders."""
        if self.num_nodes > 1 and self.local_rank == 0:
            env = self.cluster_environment
            store = dist.TCPStore(
                env.main_address, env.main_port, self.num_nodes, self.node_rank == 0, timeout=self.startup_timeout
            )
            self._leaders = dist.ProcessGroupGloo(
                dist.PrefixStore("async_sgd_leaders", store), self.node_rank, self.num_nodes, self.collective_timeout
            )

    def plan_rounds(self, planned: float) -> None:
        """Every node plans the same update count (equal shards, same epochs), hence the same rounds."""
        if self.num_nodes > 1 and planned == float("inf"):
            raise ValueError(
                "strategy=async across nodes needs a known length to schedule its averages: set "
                "trainer.max_epochs or trainer.max_steps, e.g. trainer.max_epochs=10"
            )
        self._rounds = 0 if self.num_nodes == 1 else self.num_processes * int(planned) // self.sync_every

    def average_when_due(self) -> None:
        """After an optimizer step: a leader averages once its node made `sync_every` more updates."""
        if (
            self._leaders is not None
            and self._comm[1] < self._rounds
            and self._node_steps() >= self.sync_every * (int(self._comm[1]) + 1)
        ):
            self._average()

    def finish_rounds(self) -> None:
        """A leader whose node's workers are all done: the rounds it had not reached (the same count on every
        node), the final average, and every worker's step count summed over all nodes."""
        if self._leaders is None:
            return
        while self._comm[1] < self._rounds:
            self._average()
        self._average(final=True)
        self._steps.copy_(self._all_reduce_sum(self._steps.clone()))

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

    def node_extra(self) -> dict[str, Any]:
        """results.json's `parallel` keys across nodes (none on one node)."""
        if self.num_nodes == 1 or self._comm is None:
            return {}
        return {"nodes": self.num_nodes, "sync_every": self.sync_every, "node_averages": int(self._comm[1])}
