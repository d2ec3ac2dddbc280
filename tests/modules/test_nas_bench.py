"""scripts/bench_nas.py --smoke: the issue's table (DARTS search + retrain, random search at the same
search time, the convnet at no more parameters) comes out of real runs, one row each."""

from __future__ import annotations

import json

import pytest

from tests.helpers.runs import run_python_script


@pytest.mark.slow  # about a minute: a search, a few random candidates and four retrains, each a few batches
def test_bench_nas_smoke_prints_every_row(tmp_path) -> None:
    proc = run_python_script("scripts/bench_nas.py", "--smoke", "--seeds", "0", "--out", str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("| darts |", "| random |", "| convnet |"):
        assert row in proc.stdout, proc.stdout
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["random_candidates"][0] >= 2
    assert table["convnet"]["params"][0] <= sum(table["darts"]["params"]) / len(table["darts"]["params"])
    assert table["genotypes"]["darts"][0].startswith("normal:")
