"""Tests of recipes.stages: experiment tracking."""
