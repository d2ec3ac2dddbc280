"""Differentiable architecture search (DARTS): the candidate operations, genotypes, cells and the search
and derived nets. Plain nn.Modules; the search's training is modules.darts."""

__all__ = ["cells", "genotype", "networks", "operations", "pictures"]
