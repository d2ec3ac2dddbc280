"""LightningModules, one technique per file; plain nn.Modules live in modules.nets."""

__all__ = [
    "adapt",
    "adversarial",
    "attacks",
    "base",
    "classifier",
    "darts",
    "distill",
    "gan",
    "gan_checks",
    "gan_ema",
    "gan_losses",
    "gan_metrics",
    "gan_pictures",
    "nas",
    "nets",
    "perturbations",
    "pixel_model",
    "robustness",
    "task",
    "transfer_attack",
]
