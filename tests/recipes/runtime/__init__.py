"""Tests of recipes.runtime: start-up refusals, the run-dir lock, signals."""
