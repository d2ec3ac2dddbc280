"""Benchmark and demo scripts, each run as `python scripts/NAME.py` from a checkout. A package only so that
import-linter can check that no script imports the tests (pyproject.toml, [tool.importlinter])."""
