"""Tests of recipes.sweep: hyper-parameter search."""
