"""The recipes whose training differs most from a plain classifier's, trained on the GPU: post-training
int8 quantization with every export (each artifact checked against the net on the CPU), the GAN (two
optimizers, a feature classifier trained first) and adversarial training (PGD in every step)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.gpu import GPU, needs_cuda, ran_on_the_gpu
from tests.helpers.runs import train_ok

pytestmark = needs_cuda


def test_a_gpu_trained_net_quantizes_and_exports_with_parity(run_dir: Path) -> None:
    results = train_ok(run_dir, *GPU, "recipe=ptq", "trainer.max_epochs=3", "export=all", "export.repeats=1")
    assert results["metrics"]["test/acc"] > 0.5, results["metrics"]
    export = results["export"]
    assert export["parity_max_abs_diff"] <= 1e-4 and export["top1_agreement"] == 1.0, export  # fp32 ONNX, program
    assert export["int8"]["top1_agreement"] >= 0.99 and export["int8"]["parity_max_abs_diff"] <= 1.0, export
    assert all((run_dir / export[fmt]).is_file() for fmt in ("onnx", "program", "onnx_int8"))
    assert ran_on_the_gpu(run_dir)


def test_gan_trains_on_the_gpu(run_dir: Path) -> None:
    results = train_ok(
        run_dir,
        *GPU,
        "recipe=gan",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        "task.fd_samples=100",
        "task.val_samples=100",
        "prerequisites.feature.trainer.max_epochs=2",
    )
    metrics = results["metrics"]
    # three epochs are far from good samples (coverage may still be 0): the run measured them, on the GPU
    assert metrics["test/fd"] > metrics["test/fd_real"] > 0 and 0 <= metrics["test/class_coverage"] <= 1, metrics
    assert ran_on_the_gpu(run_dir)


def test_adversarial_training_on_the_gpu(run_dir: Path) -> None:
    results = train_ok(run_dir, *GPU, "recipe=adv_train", "trainer.max_epochs=3")
    metrics = results["metrics"]
    assert metrics["test/acc"] > 0.5 and metrics["test/robust_acc"] > 0.1, metrics  # chance is 0.1
    assert results["monitor"]["metric"] == "val/robust_acc" and ran_on_the_gpu(run_dir)
