"""k-means weight sharing (Han et al., Deep Compression, ICLR 2016).

At `start_epoch` the nonzero weights of each weight tensor (a Linear / Conv2d's weight, an LSTM's
input, recurrent and projection matrices: callbacks/surgery/weights.py) are clustered into 2^bits
shared values (scikit-learn's 1-D k-means from centroids spread linearly between the tensor's smallest
and largest weight, Han's best initialization); every weight then indexes its centroid. Training goes on with
the assignments fixed and the centroids fine-tuned: a weight is `centroids[index]`, so autograd
gives each centroid the sum of its members' gradients, as in the paper. Zeros (a pruned layer's)
are not clustered and stay zero (the pruning mask still applies). Layers an earlier binary or
ternary step owns are left to it: weight sharing then covers the layers they keep at full
precision. Each tensor ships as its codebook and Huffman-coded indices (callbacks/formats/dcz.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from typing_extensions import override

from callbacks.parametrized import LatentWeight, LatentWeightStep, parametrization
from callbacks.surgery.weights import weight_targets

__all__ = ["SharedWeight", "WeightSharing", "cluster", "linear_centroids"]


def linear_centroids(values: torch.Tensor, count: int) -> torch.Tensor:
    """`count` centroids spaced evenly over [min, max] of `values` (Han's linear initialization)."""
    return torch.linspace(float(values.min()), float(values.max()), count, dtype=torch.float64)


def cluster(values: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means of `values` from the linear initialization: (centroids, index of each value)."""
    points = values.detach().double().cpu().numpy().reshape(-1, 1)
    init = linear_centroids(values, count).numpy().reshape(-1, 1)
    with warnings.catch_warnings():  # fewer distinct values than clusters: some stay empty, harmless
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=count, init=init, n_init=1, max_iter=100, tol=0.0).fit(points)
    return torch.from_numpy(kmeans.cluster_centers_.ravel()), torch.from_numpy(kmeans.labels_.astype(np.int64))


class SharedWeight(LatentWeight):
    """`latent -> centroids[index]`, 0 where the weight was 0 when clustered."""

    def __init__(self, owner: str, shape: torch.Size, bits: int) -> None:
        super().__init__(owner, shape)
        self.centroids = nn.Parameter(torch.zeros(2**bits))  # fine-tuned; in the optimizer from setup on
        self.register_buffer("index", torch.zeros(shape, dtype=torch.uint8))  # fixed assignments
        self.register_buffer("zero", torch.zeros(shape, dtype=torch.bool))  # weights kept at 0

    @override
    def compute(self, latent: torch.Tensor) -> torch.Tensor:
        shared = self.centroids[self.index.long()]
        return torch.where(self.zero, torch.zeros((), dtype=shared.dtype, device=shared.device), shared)

    @override
    @torch.no_grad()
    def activate(self, latent: torch.Tensor, weight: torch.Tensor) -> None:
        """Cluster the nonzeros of `weight` (the tensor as the net computes it, masks applied)."""
        self.zero.copy_(weight == 0)
        nonzero = weight[~self.zero]
        if nonzero.numel():
            centroids, labels = cluster(nonzero, self.centroids.numel())
            self.centroids.copy_(centroids.to(self.centroids))
            self.index[~self.zero] = labels.to(self.index)
        super().activate(latent, weight)


class WeightSharing(LatentWeightStep):
    """k-means weight sharing with `bits` bits of index per weight, on every Linear / Conv2d weight and
    recurrent matrix."""

    step = "kmeans"
    order_in_stage = 1
    order_reason = "cluster the weights that are left: weight sharing after pruning keeps the zeros out of the clusters"

    def __init__(self, bits: int = 4, start_epoch: int = 0) -> None:
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(
                f"compress.kmeans.bits={bits} must be an integer in [1, 8] (2^bits shared values per layer), e.g. 4"
            )
        super().__init__(start_epoch)
        self.bits = bits

    @override
    def targets(self, net: nn.Module) -> list[tuple[nn.Module, str]]:
        """Every weight tensor that no earlier step (binary, ternary) parametrized."""
        return [(m, tensor) for _, m, tensor in weight_targets(net) if parametrization(m, tensor) is None]

    @override
    def make(self, module: nn.Module, latent: torch.Tensor) -> LatentWeight:
        return SharedWeight(self.step, latent.shape, self.bits)
