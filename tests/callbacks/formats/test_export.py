"""Final export: every net exports to ONNX and a torch.export program that match it on the test
set; the CLI paths write and verify artifacts; a parity miss is an error that leaves nothing behind; the
int8 export needs nothing of torch's deprecated `torch.ao.quantization` beyond what `import torch` loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from callbacks.formats.traced import ExportError, export_and_verify
from callbacks.surgery.quantize import Phase, instrument, set_phase
from modules.nets.convnet import ConvNet
from modules.nets.lenet import LeNet5
from modules.nets.mlp import MLP
from modules.nets.resnet import ResNet18
from tests.helpers import REPO
from tests.helpers.runs import run_module, train_ok, user_env

NETS = [(MLP, (1, 8, 8)), (LeNet5, (1, 8, 8)), (ConvNet, (3, 16, 16)), (ResNet18, (3, 32, 32))]


def inputs(shape: tuple[int, ...], n: int = 24) -> torch.Tensor:
    """Parity inputs as a task gives them (a classifier: its test images)."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("net_cls", "shape"), NETS, ids=[n.__name__ for n, _ in NETS])
def test_every_net_exports_with_parity(net_cls, shape, tmp_path: Path) -> None:
    net = net_cls(input_shape=shape, num_classes=10)
    net.train()  # export must use eval mode (BatchNorm, Dropout) whatever mode the net is in
    report = export_and_verify(
        net, torch.zeros(2, *shape), inputs(shape), tmp_path / "export", batch_size=16, repeats=3
    )
    assert report["parity_max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert (tmp_path / report["onnx"]).is_file() and (tmp_path / report["program"]).is_file()
    assert set(report["latency_ms"]) == {"torch_fp32", "onnx", "program"}
    assert all(v > 0 for v in report["latency_ms"].values())
    session = ort.InferenceSession(str(tmp_path / report["onnx"]), providers=["CPUExecutionProvider"])
    for size in (1, 5):  # the batch dimension is dynamic
        logits = session.run(None, {"input": np.random.rand(size, *shape).astype(np.float32)})[0]
        assert logits.shape == (size, 10)


def test_export_all_writes_every_format_that_applies(tmp_path: Path) -> None:
    """export=all (conf/export/all.yaml): onnx and program for any net, and the int8 model too for a
    quantized one, where export=all used to drop it."""
    settings = {**OmegaConf.to_container(OmegaConf.load(REPO / "conf/export/all.yaml")), "repeats": 1}
    net = MLP(input_shape=(1, 8, 8), num_classes=10)
    plain = export_and_verify(net, torch.zeros(2, 1, 8, 8), inputs((1, 8, 8)), tmp_path / "plain", **settings)
    assert set(plain["latency_ms"]) == {"torch_fp32", "onnx", "program"}
    instrument(net)
    set_phase(net, Phase.OBSERVE)
    net(inputs((1, 8, 8), 64))
    set_phase(net, Phase.FROZEN)
    quantized = export_and_verify(net, torch.zeros(2, 1, 8, 8), inputs((1, 8, 8)), tmp_path / "q", **settings)
    assert set(quantized["latency_ms"]) == {"torch_fp32", "onnx", "program", "onnx_int8"}
    assert (tmp_path / quantized["onnx_int8"]).is_file()


def test_a_parity_miss_is_an_error_and_leaves_no_artifact(tmp_path: Path) -> None:
    net = MLP(input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ExportError, match="does not match"):
        export_and_verify(
            net, torch.zeros(2, 1, 8, 8), inputs((1, 8, 8)), tmp_path, formats=["onnx"], atol=-1.0, repeats=1
        )
    assert not (tmp_path / "model.onnx").exists()
    with pytest.raises(ExportError, match="unknown"):
        export_and_verify(net, torch.zeros(2, 1, 8, 8), inputs((1, 8, 8)), tmp_path, formats=["tflite"])


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_train_exports_the_best_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok(run_dir, "trainer.max_epochs=2", "export=all")
    export = results["export"]
    assert export["onnx"] == "export/model.onnx" and export["program"] == "export/model.pt2"
    assert export["parity_max_abs_diff"] <= 1e-4 and export["top1_agreement"] == 1.0
    assert export["batch_size"] == 256 and set(export["latency_ms"]) == {"torch_fp32", "onnx", "program"}
    # recipes.export re-exports an existing checkpoint the same way
    proc = run_module(
        "recipes.export",
        f"ckpt_path={run_dir / results['checkpoint']}",
        "export=program",
        f"out_dir={tmp_path / 'again'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert report["top1_agreement"] == 1.0 and (tmp_path / "again" / "model.pt2").is_file()
    proc = run_module("recipes.export", f"ckpt_path={run_dir / results['checkpoint']}", "export=none")
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: export=none")


# `import torch` itself still loads torch.ao.quantization (through the legacy torch.quantization alias), so
# the check is that the int8 export imports none of it beyond that: every later torch.ao.quantization import
# (torch.ao.quantization.fx._decomposed, which used to register the quantize / dequantize ops) fails.
WITHOUT_TORCH_AO_QUANTIZATION = """
import sys, tempfile
from pathlib import Path
import torch
loaded = {m for m in sys.modules if m.startswith("torch.ao.quantization")}
class Removed:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("torch.ao.quantization") and name not in loaded:
            raise ImportError(f"{name} is gone (deprecated upstream)")
sys.meta_path.insert(0, Removed())
from callbacks.formats.traced import export_and_verify
from callbacks.surgery.quantize import Phase, instrument, set_phase
from modules.nets.convnet import ConvNet
torch.manual_seed(0)
net = ConvNet((3, 16, 16), 10, channels=(8, 16))
instrument(net)
set_phase(net.train(), Phase.OBSERVE)
for _ in range(3):
    net(torch.rand(32, 3, 16, 16))
set_phase(net, Phase.FROZEN)
x = torch.rand(64, 3, 16, 16)
with tempfile.TemporaryDirectory() as out:
    report = export_and_verify(net, x[:2], x, Path(out), formats=["onnx_int8"], batch_size=32, repeats=1)
assert report["int8"]["kernels"] == {"QLinearConv": 2, "QGemm": 1}, report
assert report["int8"]["top1_agreement"] >= 0.99, report
assert "torch.ao.quantization.fx._decomposed" not in sys.modules
print("int8 export ok")
"""


def test_int8_export_runs_without_torch_ao_quantization() -> None:
    """A quantized ConvNet's int8 ONNX export, in a process where importing any more of
    torch.ao.quantization fails (as after its removal upstream): it writes QLinearConv / QGemm kernels that
    agree with the fake-quantized net (its ops are the project's own: callbacks/surgery/int8_ops.py)."""
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH_AO_QUANTIZATION],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=user_env(),
    )
    assert proc.returncode == 0 and "int8 export ok" in proc.stdout, proc.stdout + proc.stderr[-3000:]
