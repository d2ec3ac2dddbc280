"""Entry points that printed a traceback where one line was promised: a required value left unset
(`ckpt_path`), the SLURM launcher on a machine without SLURM, an MLflow tracking server that is not
there. Each is now one `error:` line naming the value and the fix, exit 2, nothing left behind; each
runs the real entry point (tests/helpers/in_process.py) as a user launches it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, train_in_process


@pytest.mark.parametrize("module", ["recipes.evaluate", "recipes.export", "recipes.attack", "recipes.generate"])
def test_an_unset_ckpt_path_is_one_line(module: str, tmp_path: Path) -> None:
    proc = run_module_in_process(module, cwd=tmp_path)
    assert proc.returncode == 2
    assert_clean_failure(proc, None, "ckpt_path is required", "ckpt_path=")
    assert not any(tmp_path.iterdir())


def test_a_required_data_root_is_one_line(run_dir: Path) -> None:
    """data=imagefolder leaves data.root to the user: unset, it is asked for, not a MissingMandatoryValue."""
    assert_clean_failure(train_in_process(run_dir, "data=imagefolder"), run_dir, "data.root is required")


def test_submitit_slurm_without_slurm_is_refused_before_the_study(tmp_path: Path) -> None:
    """No srun/sbatch on PATH: refused at the start of the multirun, before the sweep dir and the Optuna
    study's database exist."""
    sweep = tmp_path / "sweep"
    proc = run_module_in_process(
        "recipes.train",
        "--multirun",
        "hparams_search=baseline",
        "hydra/launcher=submitit_slurm",
        f"hydra.sweep.dir={sweep}",
        env={"PATH": str(tmp_path / "no-slurm-here")},
    )
    assert proc.returncode == 2
    assert_clean_failure(proc, None, "hydra/launcher=submitit_slurm", "hydra/launcher=submitit_local")
    assert not sweep.exists()


def _free_port() -> int:
    """A port nothing listens on: bound, read, closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_mlflow_server_is_one_quick_line(run_dir: Path) -> None:
    """MLflow itself retries for a minute and ends in chained tracebacks; the start-up check asks once."""
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = train_in_process(run_dir, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    assert time.monotonic() - start < 15
    assert proc.returncode == 2
    assert_clean_failure(proc, run_dir, f"logger.mlflow.tracking_uri={uri}", "no MLflow tracking server answers")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_failed_export_after_training_keeps_the_trained_run(run_dir: Path) -> None:
    """The final export's check fails after the fit (here an int8 tolerance no int8 file meets): one line,
    exit 1, and the run dir with its checkpoints is kept, with the command that exports it again; that
    command, with a tolerance that fits, writes the export from the kept checkpoint."""
    proc = train_in_process(
        run_dir, "trainer.max_epochs=1", "export=dynamic", "export.int8_atol=0", "export.int8_agreement=0.5"
    )
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith("error: onnx_dynamic export does not match the trained net"), line
    assert f"the trained run is kept in {run_dir}" in line, line
    ckpt = line.split("ckpt_path=")[1].split("`")[0]
    assert Path(ckpt).is_file() and Path(ckpt).parent == run_dir / "checkpoints"
    assert not (run_dir / "results.json").exists()
    again = run_module_in_process("recipes.export", f"ckpt_path={ckpt}", "export=dynamic", "export.int8_atol=100")
    assert again.returncode == 0, again.stderr[-3000:]
    assert any(run_dir.rglob("model_dynamic.onnx"))
