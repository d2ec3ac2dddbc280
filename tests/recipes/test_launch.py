"""Precision and hardware presets, and the cluster launchers: the real scripts/slurm/train.sbatch (under a
stand-in srun that sets what srun sets) and scripts/torchrun.sh each start 2 CPU ranks that train as one
DDP group, in ONE run dir named from the job, where only rank 0 writes (an audit hook records every
file each process opens for writing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from recipes.assembly.training import build_training
from recipes.errors import RecipeError
from recipes.runtime import process_env, resolvers
from recipes.train import check_launch
from tests.helpers import REPO
from tests.helpers.build import compose_train
from tests.helpers.runs import QUIET, train_in_process

TINY = (
    "data.train_samples=256",
    "trainer.max_epochs=1",
    "model.hidden=[64]",
    "logger=csv",
    "callbacks.model_summary=null",
    *QUIET,
)
# What a launcher sets; stripped from the tests' environment so that a CI job running under SLURM or
# torchrun does not leak its own ids into these runs.
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")

# sitecustomize.py for the launched processes: in each rank (a process with RANK or SLURM_PROCID), every
# file opened for writing and every dir made under $AUDIT_ROOT, written at exit to $AUDIT_OUT/rank<RANK>.txt.
AUDIT = """
import atexit, os, sys
_root = os.environ.get("AUDIT_ROOT")
_rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")  # None in bash and the torchrun agent
if _root and _rank is not None:
    _seen = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE)
        elif event in ("os.mkdir", "os.rename", "os.remove"):
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(_root):
            _seen.append(event + " " + os.path.abspath(path))

    sys.addaudithook(_hook)

    @atexit.register
    def _dump():
        with open(os.path.join(os.environ["AUDIT_OUT"], f"rank{_rank}.txt"), "w") as f:
            f.write("\\n".join(_seen))
"""

# Stand-in for srun on one node: start one task per --ntasks-per-node with the variables srun sets.
FAKE_SRUN = """#!/bin/bash
pids=()
for ((i = 0; i < SLURM_NTASKS_PER_NODE; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_ID=0 SLURM_NTASKS=$SLURM_NTASKS_PER_NODE "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment with the write audit on and outputs under tmp_path/outputs."""
    hooks, audit = tmp_path / "hooks", tmp_path / "audit"
    hooks.mkdir()
    audit.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in LAUNCH_VARS and k != "HYDRA_FULL_ERROR"
    }
    env.update(
        RECIPES_OUTPUT_DIR=str(tmp_path / "outputs"),
        AUDIT_ROOT=str(tmp_path / "outputs"),
        AUDIT_OUT=str(audit),
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(hooks), str(REPO), env.get("PYTHONPATH", "")]),
    )
    return env


def run_script(script: str, *overrides: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", str(REPO / script), *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def audited_writes(tmp_path: Path) -> dict[str, list[str]]:
    """rank -> what it wrote under the outputs dir (one audit file per rank process)."""
    return {f.stem: [line for line in f.read_text().splitlines() if line] for f in (tmp_path / "audit").iterdir()}


def assert_one_run_dir_written_by_rank_zero(tmp_path: Path, expected_name: str | None = None) -> dict:
    runs = list((tmp_path / "outputs" / "baseline").iterdir())
    assert len(runs) == 1, runs  # every rank resolved the same run dir
    run = runs[0]
    if expected_name:
        assert run.name == expected_name
    results = json.loads((run / "results.json").read_text())
    assert results["parallel"]["world_size"] == 2 and results["parallel"]["strategy"] == "DDPStrategy"
    writes = audited_writes(tmp_path)
    assert sorted(writes) == ["rank0", "rank1"], writes  # exactly 2 processes: Lightning started no more
    assert f"os.rename {run / 'results.json.tmp'}" in writes["rank0"]  # the audit sees rank 0's writes
    # rank 1 opened no file for writing; at most it made the run dir (Hydra's mkdir, parents, exist_ok)
    made = {f"os.mkdir {d}" for d in [run, *run.parents]}
    assert writes["rank1"] and set(writes["rank1"]) <= made, writes["rank1"]
    return results


def test_bf16_mixed_trains_on_cpu(run_dir: Path) -> None:
    proc = train_in_process(
        run_dir, "trainer.precision=bf16-mixed", *TINY, "data.train_samples=512", "trainer.max_epochs=4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using bfloat16 Automatic Mixed Precision (AMP)" in proc.stdout + proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] > 0.5  # 10 classes: chance is 0.1


def test_slurm_sbatch_script_runs_one_task_per_device_in_one_run_dir(tmp_path: Path) -> None:
    """The real sbatch script (trainer=ddp, num_nodes and devices from SLURM) with 2 CPU tasks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = launch_env(tmp_path)
    job = str(7000 + os.getpid() % 1000)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID=job,
        SLURM_JOB_NAME="recipes",
        SLURM_NNODES="1",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    proc = run_script("scripts/slurm/train.sbatch", "trainer.accelerator=cpu", *TINY, env=env)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    assert_one_run_dir_written_by_rank_zero(tmp_path, f"slurm-{job}")


def test_torchrun_script_runs_two_cpu_ranks_in_one_run_dir(tmp_path: Path) -> None:
    env = launch_env(tmp_path)
    env["NPROC"] = "2"
    run_script("scripts/torchrun.sh", "trainer=ddp_sim", *TINY, env=env)
    results = assert_one_run_dir_written_by_rank_zero(tmp_path)
    assert Path(results["run_dir"]).name.startswith("torchrun-")


def test_multirun_under_srun_or_torchrun_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit and srun start every rank themselves, so the popen guard does not apply there."""
    cfg = compose_train(tmp_path, "trainer=ddp_sim", "hydra.mode=MULTIRUN")
    for var in [*LAUNCH_VARS, "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"]:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RecipeError, match="submitit"):
        check_launch(cfg)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "recipes")
    assert process_env.launched_externally()
    check_launch(cfg)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_JOB_ID": "81", "SLURM_STEP_ID": "0"}, "slurm-81"),
        ({"SLURM_JOB_ID": "81", "SLURM_STEP_ID": "2"}, "slurm-81.2"),  # a job's third srun step
        (
            {"SLURM_JOB_ID": "85", "SLURM_STEP_ID": "0", "SLURM_ARRAY_JOB_ID": "80", "SLURM_ARRAY_TASK_ID": "5"},
            "slurm-80_5",
        ),
        ({"TORCHELASTIC_RUN_ID": "1cb8acb1-ec31-4fc6-9b8f-b8d45f44d820"}, "torchrun-1cb8acb1"),
        ({"TORCHELASTIC_RUN_ID": "job42"}, "torchrun-job42"),
        ({"SLURM_JOB_ID": "81", "SLURM_STEP_ID": "0", "TORCHELASTIC_RUN_ID": "x"}, "slurm-81"),  # srun torchrun
    ],
)
def test_run_id_is_pinned_by_the_launcher(env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(var)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert process_env.run_id() == expected


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SLURM_JOB_ID": "81"},  # inside salloc / the batch script itself, not an srun step
        {"SLURM_JOB_ID": "81", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "interactive"},  # srun --pty bash
        {"TORCHELASTIC_RUN_ID": "none"},  # torchrun's static multi-node default, not an id
    ],
)
def test_run_id_falls_back_to_the_clock(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(var)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    first, second = process_env.run_id(), process_env.run_id()
    assert first != second and first[:4].isdigit()  # e.g. 2026-01-31_12-00-00_123456


def hydra_compose(*overrides: str):
    resolvers.register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_gpu_and_ddp_presets_compose() -> None:
    gpu = hydra_compose("trainer=gpu")
    assert (gpu.trainer.accelerator, gpu.trainer.devices, gpu.trainer.num_nodes) == ("gpu", 1, 1)
    assert "_target_" not in gpu.strategy  # one process
    ddp = hydra_compose("trainer=ddp", "trainer.num_nodes=2", "trainer.precision=16-mixed")
    assert (ddp.trainer.accelerator, ddp.trainer.devices, ddp.trainer.num_nodes) == ("gpu", -1, 2)
    assert ddp.trainer.precision == "16-mixed"
    assert ddp.strategy._target_ == "recipes.strategies.ddp.DDPStrategy"  # Lightning's, with comm hooks on any device
    assert ddp.strategy.process_group_backend is None  # NCCL on GPU, not hard-coded


def test_run_dir_comes_from_the_slurm_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_JOB_NAME", "recipes")
    monkeypatch.setenv("RECIPES_OUTPUT_DIR", "/scratch/out")
    cfg = hydra_compose("trainer=ddp")
    assert cfg.hydra.run.dir == "/scratch/out/baseline/slurm-4242"
    assert cfg.hydra.sweep.dir == "/scratch/out/multirun/slurm-4242"
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert cfg.hydra.output_subdir is None  # rank 1 writes no .hydra/ copy


def test_submitit_slurm_launcher_composes() -> None:
    cfg = hydra_compose(
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.nodes=2",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
        "trainer=ddp",
        "trainer.num_nodes=2",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)


def test_16_mixed_on_cpu_runs_as_bf16_mixed(tmp_path: Path) -> None:
    """Decision: keep Lightning's behaviour. fp16 autocast does not exist on CPU, so Lightning warns and
    trains in bf16-mixed; a GPU recipe with precision=16-mixed still runs on a CPU machine (CI)."""
    cfg = compose_train(tmp_path, "trainer.precision=16-mixed")
    with pytest.warns(UserWarning, match="Using `precision='bf16-mixed'` instead"):
        parts = build_training(cfg, dict(HydraConfig.get().runtime.choices))
    assert parts.trainer.precision == "bf16-mixed"


@pytest.mark.slow
def test_submitit_job_writes_into_the_sweep_dir_pinned_where_it_was_submitted(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local runs the job in a later, separate process (as submitit_slurm does on
    a compute node): it still finds the sweep dir whose id the submitting process resolved."""
    env = launch_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.train", "--multirun", "hydra/launcher=submitit_local", "seed=3", *TINY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    results = json.loads((sweeps[0] / "0" / "results.json").read_text())
    assert results["seed"] == 3 and (sweeps[0] / ".submitit").is_dir()
