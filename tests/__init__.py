"""The test suite. Its folders mirror the source (recipes/, callbacks/, modules/, and strategies/ for
recipes.strategies); helpers/ holds what tests import or start, conftest.py the shared fixtures."""
