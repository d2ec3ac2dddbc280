"""QAT / PTQ on sequence nets: refused at start-up for an LSTM (they fake-quantize Linear / Conv2d only,
so its recurrent layer would ship in float under an int8 report; export=dynamic quantizes it), run on the
transformer (Linear layers only: trains fake-quantized, the int8 ONNX matches); and export=dynamic keeps
onnxruntime's quantization tool's per-tensor INFO lines out of the console and train.log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from callbacks.formats.onnx_files import ORT_QUANTIZATION_LOGGERS, quiet_onnx_passes
from tests.helpers.runs import assert_clean_failure, train_in_process, train_ok_in_process

TINY = (
    "recipe=lm",
    "data.seq_len=32",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
    "trainer.enable_model_summary=false",
)
LSTM = (*TINY, "model.hidden=32", "model.embed=16")
ROWS = ("data=digits_rows", "model=lstm", "model.hidden=32", "trainer.max_epochs=2", "trainer.limit_train_batches=5")
TRANSFORMER = (*TINY, "model=transformer", "model.width=32")
QAT = ("compress=[qat]", "compress.qat.epochs=1", "compress.qat.freeze_epochs=0")
PTQ = ("compress=[ptq]",)


@pytest.mark.parametrize(
    ("net", "step", "layer"),
    [
        (LSTM, QAT, "(lstm)"),
        (LSTM, PTQ, "(lstm)"),
        ((*LSTM, "model.share_gates=true"), QAT, "(lstm.layers.0)"),
        (ROWS, QAT, "(lstm)"),
        (ROWS, PTQ, "(lstm)"),
    ],
    ids=["lm-qat", "lm-ptq", "lm-shared-gates-qat", "digits-rows-qat", "digits-rows-ptq"],
)
def test_qat_and_ptq_refuse_an_lstm_at_start_up(tmp_path: Path, net: tuple, step: tuple, layer: str) -> None:
    """One line, exit 2, no run dir: the recurrent layer is named and export=dynamic offered instead."""
    run_dir = tmp_path / "run"
    proc = train_in_process(run_dir, *net, *step, "export=all")
    name = step[0].removeprefix("compress=")
    assert_clean_failure(proc, run_dir, f"compress={name} cannot quantize", layer, "export=dynamic")


@pytest.mark.slow
@pytest.mark.parametrize("step", [QAT, PTQ], ids=["qat", "ptq"])
def test_qat_and_ptq_quantize_the_transformer_and_export_int8(tmp_path: Path, step: tuple) -> None:
    """Every Linear (attention, MLP, head) computes fake-quantized int8 at the end; export=all writes the
    int8 ONNX (int8 weights, under half the fp32 file) and it matches the fake-quantized net."""
    results = train_ok_in_process(tmp_path, *TRANSFORMER, *step, "export=all")
    weights = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    phases = {k: int(v) for k, v in weights.items() if k.endswith("quant_phase")}
    assert any(".attn.qkv." in k for k in phases) and any(".attn.out." in k for k in phases), sorted(phases)
    assert phases and all(phase != 0 for phase in phases.values()), phases  # none left in float
    export = results["export"]
    assert export["int8"]["initializer_bytes"]["int8"] > 0
    assert export["bytes"]["onnx_int8"] < 0.5 * export["bytes"]["onnx"]
    assert export["int8"]["top1_agreement"] >= 0.99
    assert export["parity_max_abs_diff"] < 1e-4  # the fp32 formats: the net with quantization off


@pytest.mark.slow
def test_dynamic_export_keeps_the_quantizers_info_lines_quiet(tmp_path: Path) -> None:
    """onnxruntime's quantizer logs one INFO line per tensor through the root logger: none reaches the
    console or train.log."""
    proc = train_in_process(tmp_path, *LSTM, "trainer.max_epochs=1", "export=dynamic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    for text in (proc.stdout, proc.stderr, log):
        assert "Quantization parameters for tensor" not in text
    assert "[INFO]" in log  # the run's own INFO lines are kept


def test_quantization_loggers_are_quiet_only_inside_the_block() -> None:
    """The root logger (which onnxruntime's quantizers log through) is at WARNING inside, as it was after."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        with quiet_onnx_passes(ORT_QUANTIZATION_LOGGERS):
            assert not root.isEnabledFor(logging.INFO) and root.isEnabledFor(logging.WARNING)
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)
