"""Int8 quantization (QAT and PTQ): the fake-quantized net against its int8 ONNX artifact, int8
kernels in the graph onnxruntime runs, int8 weights on disk, zeros kept through quantization,
checkpoints with the same keys in every phase, resume across the QAT start, and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from onnx import numpy_helper
from torch import nn

from callbacks.formats.traced import ExportError, export_and_verify
from callbacks.qat import check_quantizable
from callbacks.surgery.quantize import Phase, fake_quant_weight, instrument, quantized_layers, set_phase
from modules.nets.convnet import ConvNet
from recipes.assembly.restore import rebuild
from recipes.assembly.training import build_training
from recipes.errors import RecipeError
from recipes.stages.scoring import score
from recipes.train import run
from tests.helpers.build import compose_train
from tests.helpers.runs import train, train_ok

QUIET = (
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "logger=csv",
)
TINY = (*QUIET, "trainer.max_epochs=3", "trainer.limit_train_batches=8", "export.repeats=2", "export.batch_size=64")


def int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of an ONNX file."""
    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]


def test_symmetric_weights_keep_zeros_and_hold_at_most_255_values_per_channel() -> None:
    weight = torch.randn(16, 8, 3, 3)
    weight[weight.abs() < 0.8] = 0
    quantized = fake_quant_weight(weight)
    assert torch.equal(quantized == 0, weight == 0)
    assert all(len(torch.unique(channel)) <= 255 for channel in quantized)


def test_prune_then_qat_ships_sparse_int8_that_onnxruntime_runs_in_int8(tmp_path: Path) -> None:
    """[prune,qat] in-process: zeros stay zero in the int8 file, int8 kernels run, the report counts the
    sparse int8 encoding, and the checkpoint (weights_only) rebuilds the fake-quantized net."""
    cfg = compose_train(
        tmp_path,
        *TINY,
        "recipe=prune_qat",
        "model.hidden=[32]",
        "compress.prune.sparsity=0.5",
        "compress.prune.start_epoch=0",
        "compress.prune.end_epoch=1",
        "compress.qat.epochs=1",
        "compress.qat.freeze_epochs=0",
    )
    results = run(cfg, dict(HydraConfig.get().runtime.choices))
    export, comp = results["export"], results["compression"]
    assert export["int8"]["kernels"] == {"QGemm": 2}  # both Linear layers run as onnxruntime's int8 GEMM
    assert export["int8"]["top1_agreement"] >= 0.99 and export["int8"]["parity_max_abs_diff"] <= 1.0
    assert set(export["latency_ms"]) == {"torch_fp32", "onnx", "onnx_int8"}
    weights = int8_weights(tmp_path / export["onnx_int8"])
    assert [w.shape for w in weights] == [(32, 64), (10, 32)]
    # the file is the QOperator graph: quantized once at the input, int8 GEMMs, dequantized once at the output
    ops = [n.op_type for n in onnx.load(str(tmp_path / export["onnx_int8"])).graph.node]
    assert sorted(ops) == ["DequantizeLinear", "QGemm", "QGemm", "QuantizeLinear", "Reshape"], ops
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)
    assert all(len(np.unique(row)) <= 255 for w in weights for row in w)
    # int8 nonzeros + 1-bit mask + scales and zero points (5 B per channel) + fp32 biases + the
    # input and output ranges (the second layer takes the first's output range as its input's)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    expected = sum(min(w.size, int((w != 0).sum()) + -(-w.size // 8)) for w in weights) + 5 * 42 + 4 * 42 + 3 * 5
    assert comp["compressed_bytes"] == expected and nonzero < comp["compressed_bytes"]
    assert comp["ratio"] == round(comp["dense_bytes"] / expected, 3) and comp["ratio"] > 5
    ckpt = torch.load(tmp_path / results["checkpoint"], weights_only=True)
    assert {"net.1.input_range", "net.1.output_range", "net.1.quant_phase"} <= set(ckpt["state_dict"])
    _, datamodule, module, _ = rebuild(str(tmp_path / results["checkpoint"]))
    assert all(int(m.quant_phase) == Phase.OBSERVE for m in quantized_layers(module.net).values())
    assert score(cfg, module, datamodule) == results["metrics"]


def test_convnet_int8_artifact_matches_fake_quant_and_folds_batchnorm(tmp_path: Path) -> None:
    """The int8 ONNX model computes what the fake-quantized net does: QLinearConv kernels in the file
    and after onnxruntime's optimization, BatchNorm folded away, int8 weights on disk, the RGB input's
    3 channels padded to 4 with zero weights (MLAS's fast int8 convolution takes multiples of 4)."""
    torch.manual_seed(0)
    net = ConvNet((3, 16, 16), 10, channels=(8, 16))
    instrument(net)
    net.train()
    set_phase(net, Phase.OBSERVE)
    for _ in range(5):
        net(torch.rand(32, 3, 16, 16))
    set_phase(net, Phase.FROZEN)
    inputs = torch.rand(200, 3, 16, 16)
    report = export_and_verify(
        net, inputs[:2], inputs, tmp_path / "export", formats=["onnx", "onnx_int8"], batch_size=32, repeats=2
    )
    assert report["int8"]["kernels"] == {"QLinearConv": 2, "QGemm": 1}
    path = tmp_path / "export" / "model_int8.onnx"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 1
    assert not {"BatchNormalization", "Conv", "Gemm", "MatMul"} & set(ops), ops
    weights = int8_weights(path)
    assert [w.shape for w in weights] == [(8, 4, 3, 3), (16, 8, 3, 3), (10, 16)]
    assert not weights[0][:, 3].any()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    artifact = session.run(None, {"input": inputs.numpy()})[0]
    with torch.no_grad():
        fake = net.eval()(inputs).numpy()
    assert (artifact.argmax(1) == fake.argmax(1)).mean() >= 0.99
    assert np.abs(artifact - fake).max() <= report["int8"]["parity_max_abs_diff"] + 1e-6 <= 1.0


def test_int8_export_of_a_float_net_is_refused(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ExportError, match="export.formats has onnx_int8 but the net is not quantized"):
        export_and_verify(net, torch.zeros(2, 1, 8, 8), torch.zeros(4, 1, 8, 8), tmp_path, formats=["onnx_int8"])


BAD = [
    (["recipe=qat", "compress.qat.bits=4"], "compress.qat.bits=4 is not supported"),
    (["recipe=ptq", "compress.ptq.bits=16"], "compress.ptq.bits=16 is not supported"),
    (["recipe=qat", "compress.qat.start_epoch=40"], "compress.qat.start_epoch=40 must be < trainer.max_epochs=40"),
    (["recipe=qat", "compress.qat.epochs=50"], "compress.qat.start_epoch=-10 must be >= 0"),
    (["recipe=qat", "compress.qat.freeze_epochs=3"], "compress.qat.freeze_epochs=3 must be in [0, 3)"),
    (["recipe=ptq", "compress.ptq.calibration_batches=0"], "compress.ptq.calibration_batches=0 must be >= 1"),
    (
        ["recipe=qat", "compress=[qat,prune]"],
        "prune must come before qat (prune the weights that ship, then change "
        "how they are stored); use compress=[prune,qat]",
    ),
    (["recipe=qat", "compress=[qat,svd]"], "use compress=[svd,qat]"),
    (["recipe=qat", "compress=[ptq,qat]"], "ptq and qat both quantize the net"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_quantization_settings_are_refused_before_training(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(RecipeError) as err:
        build_training(cfg, dict(HydraConfig.get().runtime.choices))
    assert message in str(err.value)


class DataDependent(nn.Module):
    """A net whose forward branches on its input's values: torch.fx cannot trace it, and its BatchNorm
    needs the trace to be folded (an untraceable net without BatchNorm quantizes each layer unlinked)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_an_untraceable_net_is_refused_with_the_reason() -> None:
    with pytest.raises(
        ValueError,
        match=r"compress.qat: torch.fx cannot trace DataDependent \(.*\): BatchNorm "
        r"folding and ReLU fusion need a traceable net",
    ):
        check_quantizable("qat", DataDependent())


def test_bad_bits_exit_in_one_line(run_dir: Path) -> None:
    proc = train(run_dir, "recipe=qat", "compress.qat.bits=4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: compress.qat.bits=4 is not supported")
    assert not run_dir.exists()


RESUME = (
    "recipe=qat",
    "model=convnet",
    "model.channels=[8,16]",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=10",
    "compress.qat.start_epoch=2",
    "compress.qat.freeze_epochs=1",
    "export=none",
    *QUIET,
)


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_resume_across_the_qat_start_gives_identical_weights(tmp_path: Path) -> None:
    """Stopped after epoch 2 (fp32), resumed with ckpt_path=last into QAT: the same keys in every
    checkpoint and the same final weights, ranges and metrics as the uninterrupted run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = train_ok(straight, *RESUME)
    train_ok(resumed, *RESUME, "trainer.max_steps=20")
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["epoch"] == 1 and int(mid["state_dict"]["net.0.0.0.quant_phase"]) == Phase.FLOAT
    b = train_ok(resumed, *RESUME, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(mid["state_dict"]) == set(wb)
    assert int(wa["net.0.0.0.quant_phase"]) == Phase.FROZEN
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a["metrics"] == b["metrics"]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_qat_matches_or_beats_ptq(tmp_path: Path) -> None:
    """Same net, data, seed and budget: QAT's int8 accuracy is at least PTQ's (small MLP on digits)."""
    common = ("model.hidden=[64]", "trainer.max_epochs=8", "export=none", *QUIET)
    qat = train_ok(tmp_path / "qat", "recipe=qat", "compress.qat.epochs=3", *common)
    ptq = train_ok(tmp_path / "ptq", "recipe=ptq", *common)
    assert qat["metrics"]["test/acc"] >= ptq["metrics"]["test/acc"] - 0.005
    assert qat["compression"]["steps"] == ["qat"] and ptq["compression"]["steps"] == ["ptq"]


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
@pytest.mark.parametrize(
    "overrides",
    [
        ("compress=[hidden_prune,qat]", "compress.hidden_prune.start_epoch=1"),
        ("compress=[svd,qat]", "compress.svd.epoch=1"),
        ("model=lenet5",),
        ("model=resnet18", "trainer.limit_train_batches=3"),
    ],
    ids=["hidden_prune+qat", "svd+qat", "lenet5", "resnet18"],
)
def test_qat_composes_and_runs_on_every_classifier_net(overrides: tuple[str, ...], run_dir: Path) -> None:
    results = train_ok(
        run_dir,
        "recipe=qat",
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=10",
        "compress.qat.epochs=2",
        "export.repeats=2",
        "export.batch_size=32",
        *QUIET,
        *overrides,
    )
    int8 = results["export"]["int8"]
    assert int8["top1_agreement"] >= 0.99 and int8["kernels"]
    assert results["compression"]["steps"][-1] == "qat" and results["compression"]["ratio"] > 2.5
    assert json.loads((run_dir / "results.json").read_text()) == results
