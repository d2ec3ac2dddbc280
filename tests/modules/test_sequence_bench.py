"""scripts/bench_sequence.py --smoke: the issue's table of sequence nets comes out of real runs (train,
export=dynamic, int8 bpc in onnxruntime), one row per net, with the targets' ratios."""

from __future__ import annotations

import pytest

from tests.helpers.runs import run_python_script


@pytest.mark.slow  # ~4 minutes under load: 4 runs, each exporting ONNX and int8 ONNX
def test_bench_sequence_smoke_prints_every_row(tmp_path) -> None:
    proc = run_python_script(
        "scripts/bench_sequence.py", "--smoke", "--seeds", "0", "--out", str(tmp_path), timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("| lstm |", "| lstmp |", "| shared |", "| transformer |"):
        assert row in proc.stdout, proc.stdout
    assert "lstmp params / lstm params" in proc.stdout and "warning" not in proc.stdout, proc.stdout
    assert (tmp_path / "table.json").is_file()
