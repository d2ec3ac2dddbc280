"""Tests of the entry points (train, attack, launch, speed) and, in sub-folders, of recipes' packages."""
