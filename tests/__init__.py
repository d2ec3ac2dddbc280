"""The test suite. Its folders mirror the source (recipes/, callbacks/, modules/, and strategies/ for
recipes.strategies); gpu/ is the GPU suite (`-m gpu`, docs/gpu.md); helpers/ holds what tests import or
start, conftest.py the shared fixtures."""
