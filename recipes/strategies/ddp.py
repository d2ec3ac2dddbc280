"""Synchronous data parallelism: Lightning's DDPStrategy with DDP communication hooks on every device
and a count of the bytes this rank sends in gradient all-reduces (`comm_bytes`).

Lightning registers `ddp_comm_hook` only when the device is CUDA (`DDPStrategy._register_ddp_hooks`),
so on CPU/gloo a hook such as post-local SGD is silently dropped and training is plain DDP. Here the
hook is registered wherever DDP runs; with none given it is torch's default all-reduce hook, which
does what DDP's built-in reducer does (divide by the world size, all-reduce each bucket).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _register_ddp_comm_hook
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from typing_extensions import override

from recipes.strategies.timeout import TimedDDPStrategy

__all__ = ["DDPStrategy", "Hook"]

Hook = Callable[[Any, dist.GradBucket], torch.futures.Future]


class DDPStrategy(TimedDDPStrategy):
    """`comm_bytes`: bytes of the gradient buckets this rank handed to an all-reduce during fit (the
    bucket as the hook sees it, after a wrapper such as fp16 compression).

    timeout / startup_timeout: seconds a rank waits for the others in a collective / at start-up
    (recipes.strategies.timeout)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook_bytes = 0

    @property
    @override
    def comm_bytes(self) -> int:
        return self.hook_bytes

    @override
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        # A task that steps its own optimizers (a GAN: the discriminator's update leaves the generator
        # out of the graph) needs DDP to look for parameters a backward pass did not reach.
        if not self.lightning_module.automatic_optimization:
            self._ddp_kwargs["find_unused_parameters"] = True
        return super()._setup_model(model)

    def hook_sends(self, state: Any) -> bool:
        """Whether the hook all-reduces the bucket on this call (the default hook always does)."""
        return True

    def counted(self, hook: Hook) -> Hook:
        """`hook`, counting the bytes of each bucket it sends."""

        def counted_hook(state, bucket):  # no annotations: DDP checks them, and here they'd be strings
            if self.hook_sends(state):
                buffer = bucket.buffer()
                self.hook_bytes += buffer.numel() * buffer.element_size()
            return hook(state, bucket)

        counted_hook.__qualname__ = f"counted({getattr(hook, '__qualname__', hook)})"
        return counted_hook

    @override
    def _register_ddp_hooks(self) -> None:
        hook = self._ddp_comm_hook or default_hooks.allreduce_hook
        _register_ddp_comm_hook(
            model=self.model,
            ddp_comm_state=self._ddp_comm_state,
            ddp_comm_hook=self.counted(hook),
            ddp_comm_wrapper=self._ddp_comm_wrapper,
        )
