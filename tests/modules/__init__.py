"""Tests of modules/: the nets, the tasks and their contract, the attacks."""
