"""Lightning callbacks that transform a model at scheduled points of training, one technique per file."""

__all__ = [
    "binary",
    "dsd",
    "formats",
    "hidden_prune",
    "lowrank",
    "parametrized",
    "plan",
    "progress",
    "prune",
    "ptq",
    "qat",
    "step",
    "surgery",
    "ternary",
    "weight_sharing",
]
