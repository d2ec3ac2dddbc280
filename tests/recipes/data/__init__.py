"""Tests of recipes.data: data modules on real formats, bad data files, the mixing sampler."""
