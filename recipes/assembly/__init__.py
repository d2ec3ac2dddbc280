__all__ = [
    "acceleration",
    "divergence",
    "instantiation",
    "loggers",
    "prerequisites",
    "restore",
    "signatures",
    "startup_checks",
    "tasks",
    "training",
]
