"""Tests of recipes.assembly: composing and building a run, the divergence guard."""
