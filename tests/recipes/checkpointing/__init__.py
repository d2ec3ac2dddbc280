"""Tests of recipes.checkpointing: checkpoint files under failure, trust, resume paths and metrics,
checkpoints written before the package layout."""
