"""The GPU suite (`python -m pytest -m gpu`, docs/gpu.md): the real entry point on a CUDA device, each
GPU path a run can take (precisions, channels-last, torch.compile, DDP, int8 export, the GAN and
adversarial recipes, resume). Every test skips with "CUDA is not available" on a machine without one."""
