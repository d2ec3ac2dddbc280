"""trainer=gpu as a user runs it: each precision, channels-last and torch.compile train a net that
learns (10 classes: chance is 0.1), on the GPU, under the precision asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.gpu import GPU, needs_bf16, needs_cuda, ran_on_the_gpu, run_config
from tests.helpers.runs import train_ok

pytestmark = needs_cuda

EPOCHS = "trainer.max_epochs=3"


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", pytest.param("bf16-mixed", marks=needs_bf16())], ids=str)
def test_each_precision_trains_on_the_gpu(precision: str, run_dir: Path) -> None:
    results = train_ok(run_dir, *GPU, EPOCHS, f"trainer.precision={precision}")
    assert results["metrics"]["test/acc"] > 0.5, results["metrics"]
    assert ran_on_the_gpu(run_dir) and run_config(run_dir).trainer.precision == precision
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # fp16 AMP keeps a gradient scaler, saved with the checkpoint (Lightning's MixedPrecision state);
    # 32-true and bf16-mixed have none
    assert ("MixedPrecision" in ckpt) == (precision == "16-mixed"), sorted(ckpt)
    if precision == "16-mixed":
        assert ckpt["MixedPrecision"]["scale"] > 0
    # mixed precision computes in half precision but keeps (and ships) float32 weights
    assert all(w.dtype == torch.float32 for w in ckpt["state_dict"].values() if w.is_floating_point())


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_channels_last_and_compile_train_a_conv_net_on_the_gpu(option: str, run_dir: Path) -> None:
    overrides = ["model=convnet", "data.image_size=32", "trainer.precision=16-mixed", f"model.{option}=true"]
    results = train_ok(run_dir, *GPU, EPOCHS, *overrides)
    assert results["metrics"]["test/acc"] > 0.5, results["metrics"]
    assert ran_on_the_gpu(run_dir) and run_config(run_dir).model[option] is True
    if option == "channels_last":  # the weights trained (and were saved) in NHWC layout
        weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].values()
        convs = [w for w in weights if w.dim() == 4 and w.shape[1] > 1]  # one input channel: both layouts agree
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
