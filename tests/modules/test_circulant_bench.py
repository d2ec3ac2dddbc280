"""scripts/bench_circulant.py on tiny sizes: the crossover table has a ratio per fitting block and a dash
where a block is wider than the layer, and the whole-net table has its three rows (dense, circulant with
the DFT as MatMuls, circulant with ONNX DFT ops), each ONNX file matching its net."""

from __future__ import annotations

from tests.helpers.runs import run_python_script


def test_bench_circulant_prints_the_crossover_and_whole_net_tables() -> None:
    proc = run_python_script(
        "scripts/bench_circulant.py",
        *("--widths", "32", "64", "--blocks", "8", "64", "--batches", "1", "--threads", "1"),
        *("--calls", "1", "--repeats", "1", "--net-width", "64", "--net-block", "8"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| 1 | 1 |")]
    assert [row[3].strip() for row in rows] == ["32", "64"]
    assert rows[0][6].strip() == "-" and float(rows[1][6]) > 0  # b=64 does not fit width 32; fits 64
    for name in ("| dense |", "| circulant b=8 |", "| circulant b=8, ONNX DFT ops |"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(name))
        assert float(line.split("|")[4]) <= 1e-4, line  # ONNX parity
