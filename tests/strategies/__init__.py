"""Tests of recipes.strategies: what each strategy computes, and that none hangs."""
