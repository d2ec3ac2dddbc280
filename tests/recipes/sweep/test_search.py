"""Hyper-parameter search (hparams_search=NAME, hydra/sweeper=optuna): the search spaces fit their recipes,
the objective's direction is the task's, a diverged trial is recorded FAIL while the sweep goes on, a
killed sweep resumes with its finished trials kept, two sweep processes share one study, trials run as
submitit jobs, a killed sweep's worker processes end with it, recipes.summarize tables a sweep dir, and
bad input is refused in one line before any trial runs. Kills and meetings happen at a gate (tests/helpers/sweep_gate.py), never at a polled moment."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from optuna.trial import TrialState

from recipes.assembly.startup_checks import check_startup
from recipes.errors import RecipeError
from recipes.runtime.overrides import group_options, preflight
from recipes.runtime.resolvers import register_resolvers
from recipes.summarize import CSV_NAME, PLOT_NAME, summarize
from recipes.sweep.search_space import parse
from tests.helpers import REPO
from tests.helpers.build import compose_train
from tests.helpers.runs import QUIET, assert_clean_failure, run_module
from tests.helpers.sweep_gate import held, release

TINY = [
    "hydra/launcher=basic",
    "model.hidden=[32]",
    "task.optimizer.weight_decay=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "logger=csv",
    "callbacks.model_summary=null",
    *QUIET,
]


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recipes.train",
        "-m",
        "hparams_search=baseline",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY,
        *overrides,
    ]


def study_trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="baseline", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()


def gate(signal_dir: Path, first: int = 0) -> list[str]:
    """Overrides that hold every trial numbered `first` or later at its fit start (tests/helpers/sweep_gate.py)."""
    signal_dir.mkdir(exist_ok=True)
    return [
        "+callbacks.gate._target_=tests.helpers.sweep_gate.TrialGate",
        "+callbacks.gate.run_dir=${paths.run_dir}",
        f"+callbacks.gate.signal_dir={signal_dir}",
        f"+callbacks.gate.first={first}",
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """The sweep in its own process group (so a test can kill it whole, trials included), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_held(procs: dict[Path, subprocess.Popen], signal_dir: Path, count: int) -> list[int]:
    """Wait until `count` trials are held at the gate; fail with a sweep's output (its log) if it ends first."""
    deadline = time.monotonic() + 240
    while len(numbers := held(signal_dir)) < count:
        for log, proc in procs.items():
            assert proc.poll() is None, f"sweep ended ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{numbers} held at the gate after 240 s, not {count}"
        time.sleep(0.2)
    return numbers


def kill_at_gate(command: list[str], tmp_path: Path, first: int) -> None:
    """Run the sweep with trials from number `first` on held at the gate; once one is held there, SIGKILL
    the sweep's process group (the sweep and its trials, as a crash, the OOM killer or scancel would)."""
    signal_dir, log = tmp_path / "gate", tmp_path / "killed.log"
    proc = start([*command, *gate(signal_dir, first)], log)
    try:
        assert wait_until_held({log: proc}, signal_dir, 1) == [first]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def live_processes(session: int) -> list[str]:
    """`pid command` of each live process (not a zombie) in a session: a sweep started by start() and
    everything it started, re-parented or not (read from /proc, Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended while being read
            continue
        state, _ppid, _pgrp, sid = text.rpartition(")")[2].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(f"{stat.parent.name} {cmdline[:160]}")
    return found


def wait_until_gone(session: int, seconds: float) -> list[str]:
    """Poll until no process of the session lives, for up to `seconds`; returns those still alive."""
    deadline = time.monotonic() + seconds
    while (alive := live_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def resume(command: list[str]) -> subprocess.CompletedProcess:
    """The same sweep command again (no gate), as a user restarts a killed sweep."""
    proc = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("name", group_options("hparams_search"))
def test_each_search_space_fits_its_recipe(tmp_path: Path, name: str) -> None:
    """Every key of the space exists in the recipe it selects, and a trial at the space's corner passes
    the start-up checks; the objective's direction is the task's monitor_mode."""
    register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hparams_search={name}", f"paths.run_dir={tmp_path}"], return_hydra_config=True
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == cfg.task.monitor_mode and sweeper.n_trials >= 1
    space = parse([f"{key}={value}" for key, value in sweeper.params.items()])
    assert len(space.distributions) >= 2, space
    trial = compose_train(tmp_path, f"hparams_search={name}", *space.probe())
    check_startup(trial, {"recipe": name})


@pytest.mark.parametrize("recipe", ["baseline", "gan"])
def test_the_objective_direction_is_the_tasks(tmp_path: Path, recipe: str, feature_ckpt: str) -> None:
    references = [f"task.feature_ckpt={feature_ckpt}"] if recipe == "gan" else []
    register_resolvers()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"recipe={recipe}", "hydra/sweeper=optuna", f"paths.run_dir={tmp_path}", *references],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.direction == {"baseline": "max", "gan": "min"}[recipe] == cfg.task.monitor_mode


def test_a_diverged_trial_is_recorded_failed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """Two trials, one at lr=1e30 (it diverges): the study holds one FAIL and one COMPLETE whose value is
    the run's best val/acc (results.json), the sweep exits 0; recipes.summarize tables both."""
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(
        sweep_dir,
        "hydra.sweeper.n_trials=2",
        "~hydra.sweeper.sampler.n_startup_trials",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "task.optimizer.lr=choice(1e30,0.001)",
    )
    proc = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = {t.params["task.optimizer.lr"]: t for t in study_trials(sweep_dir)}
    assert trials[1e30].state == TrialState.FAIL and trials[0.001].state == TrialState.COMPLETE
    assert "diverged" in proc.stderr and "the sweep goes on" in proc.stdout + proc.stderr
    done = trials[0.001]
    best = summarize(sweep_dir)
    assert best is not None and best.path == sweep_dir / str(done.number)
    assert best.objective == pytest.approx(done.value) and "task.optimizer.lr=0.001" in best.overrides
    with open(sweep_dir / CSV_NAME, newline="") as file:
        rows = {row["job"]: row for row in csv.DictReader(file)}
    assert rows[str(trials[1e30].number)]["status"] == "failed" and rows[str(done.number)]["status"] == "done"
    assert float(rows[str(done.number)]["val/acc (best)"]) == pytest.approx(done.value)
    assert (sweep_dir / PLOT_NAME).stat().st_size > 0 and (sweep_dir / "optimization_results.yaml").is_file()


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_a_killed_sweep_resumes_and_runs_only_the_remaining_trials(tmp_path: Path) -> None:
    """3 trials, one at a time; SIGKILL the sweep once trial 0 has finished and been told to Optuna, while
    trial 1 runs (held at the gate); the same command again runs the cut-off trial's parameters again
    and one new trial, the 2 remaining: 3 finished in all, trial 0 kept as it was."""
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1")
    kill_at_gate(command, tmp_path, first=1)  # one trial per batch: trial 0 was told before trial 1 was asked
    before = study_trials(sweep_dir)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    resumed = resume(command)
    after = study_trials(sweep_dir)
    assert after[0].datetime_complete == before[0].datetime_complete  # kept, not run again
    assert after[1].state == TrialState.FAIL and after[1].user_attrs["interrupted"]
    assert [t.state for t in after[2:]] == [TrialState.COMPLETE, TrialState.COMPLETE]  # the remaining two, only
    assert after[2].params == before[1].params  # the cut-off trial, again
    assert sorted(int(p.parent.name) for p in sweep_dir.glob("*/results.json")) == [0, 2, 3]
    assert "1 of 3 trials finished before (0 of them recorded now), 1 interrupted trials queued again" in (
        resumed.stdout + resumed.stderr
    )


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_a_trial_that_finished_before_the_kill_is_recorded_not_run_again(tmp_path: Path) -> None:
    """2 trials in one batch (the basic launcher runs them in turn, and Optuna hears of both at the batch's
    end): SIGKILL while the second is held at the gate, trial 0's run finished but not told; on resume
    trial 0, whose results.json is there, is recorded with its objective; only the second runs again."""
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    kill_at_gate(command, tmp_path, first=1)
    assert [t.state for t in study_trials(sweep_dir)] == [TrialState.RUNNING, TrialState.RUNNING]
    results = sweep_dir / "0" / "results.json"
    finished_at = results.stat().st_mtime_ns
    resumed = resume(command)
    after = study_trials(sweep_dir)
    best = json.loads(results.read_text())["monitor"]["best"]
    assert after[0].state == TrialState.COMPLETE and after[0].value == pytest.approx(best)
    assert results.stat().st_mtime_ns == finished_at  # recorded from its results.json, not run again
    assert after[1].user_attrs["interrupted"] and after[2].params == after[1].params
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "1 of them recorded now), 1 interrupted trials queued again" in resumed.stdout + resumed.stderr


@pytest.mark.slow  # two sweep processes: 43 s beside the one-process diverged-trial test's 29 s (load 11)
def test_two_sweep_processes_share_one_study(tmp_path: Path) -> None:
    """Two sweeps started at once on one study (same storage and study_name), n_trials=4 in all, 2 asked
    at a time: every trial is held at the gate until both sweeps have asked theirs, so each runs 2. The 4
    trials have distinct numbers, parameters and job dirs (each run once, its results.json the trial's
    value), and the best trial read back from the database is the one optimization_results.yaml names."""
    sweep_dir, signal_dir = tmp_path / "sweep", tmp_path / "gate"
    command = [*sweep_command(sweep_dir, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"), *gate(signal_dir)]
    procs = {log: start(command, log) for log in (tmp_path / "a.log", tmp_path / "b.log")}
    try:
        wait_until_held(procs, signal_dir, 2)  # the first trial of each sweep's batch of 2
        release(signal_dir)
        for log, proc in procs.items():
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    trials = study_trials(sweep_dir)
    assert [t.number for t in trials] == [0, 1, 2, 3] and {t.state for t in trials} == {TrialState.COMPLETE}
    owners = sorted(t.user_attrs["owner"] for t in trials)
    assert owners[0] == owners[1] != owners[2] == owners[3]  # 2 trials from each sweep process
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no parameters proposed twice
    assert held(signal_dir) == [0, 1, 2, 3]  # each trial's run started once, in its own dir
    for trial in trials:
        job = sweep_dir / str(trial.number)
        assert json.loads((job / "results.json").read_text())["monitor"]["best"] == pytest.approx(trial.value)
        launched = set(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        assert {f"{key}={value}" for key, value in trial.params.items()} <= launched
    best = optuna.load_study(study_name="baseline", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").best_trial
    report = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert report.best_trial == best.number and report.best_value == pytest.approx(best.value)
    assert best.value == max(t.value for t in trials)


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_trials_run_as_submitit_jobs(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: the trials run through submitit's executor (SLURM's code path, minus
    sbatch), each in its own process; both trials' results.json and the study agree."""
    sweep_dir = tmp_path / "sweep"
    command = [
        *sweep_command(sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"),
        "hydra/launcher=submitit_local",
    ]
    proc = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_trials(sweep_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    for trial in trials:
        results = json.loads((sweep_dir / str(trial.number) / "results.json").read_text())
        assert results["monitor"]["best"] == pytest.approx(trial.value)
    assert (sweep_dir / ".submitit").is_dir()  # submitit's job files: the trials went through its executor


@pytest.mark.slow  # 15-25 s: two loky workers import torch and Lightning before the kill
def test_a_killed_sweep_takes_its_worker_processes_with_it(tmp_path: Path) -> None:
    """hydra/launcher=joblib, 2 trials at once, both held at the gate: SIGKILL of the sweep process alone
    (not its group: as the OOM killer or a `kill -9 PID` would) ends both loky workers, loky's and
    multiprocessing's resource trackers, and every other process the sweep started, within 3 s; the
    trackers release the sweep's shared memory (no joblib memmapping folder of it is left)."""
    sweep_dir, signal_dir, log = tmp_path / "sweep", tmp_path / "gate", tmp_path / "sweep.log"
    command = sweep_command(sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib")
    proc = start([*command, *gate(signal_dir)], log)
    try:
        wait_until_held({log: proc}, signal_dir, 2)  # both trials run, each in its own loky worker
        workers = [line for line in live_processes(proc.pid) if "loky" in line]
        assert len(workers) >= 3, workers  # 2 workers and loky's resource tracker, at least
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        alive = wait_until_gone(proc.pid, 3.0)
        assert not alive, f"still alive 3 s after the sweep was killed: {alive}"
    finally:
        if live_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not list(Path("/dev/shm").glob(f"joblib_memmapping_folder_{proc.pid}_*"))
    assert "this trial's process" in log.read_text()  # each worker said why it ended


@pytest.mark.parametrize("delay", [0.0, 1.0], ids=["during-the-trial", "before-the-trial"])
def test_a_trial_process_ends_when_its_sweep_process_dies(delay: float) -> None:
    """DieWithSweeper, the wrapper the sweeper hands its launcher, in a multiprocessing child of a
    stand-in sweep (as loky's workers are; tests/helpers/sweep_orphan.py): SIGKILL of the stand-in while the
    trial runs ends the child within a second; a child whose sweep died before its trial started ends
    as the trial starts; in the sweep's own process (the basic launcher) it only calls the task."""
    from recipes.sweep.sweeper import PARENT_POLL_S, DieWithSweeper

    assert DieWithSweeper(lambda cfg: cfg + 1, os.getpid())(1) == 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.sweep_orphan", str(delay)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        int(proc.stdout.readline())  # the child started
        if not delay:
            assert proc.stdout.readline().strip() == "watching"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        alive = wait_until_gone(proc.pid, delay + 1.0 + PARENT_POLL_S)
        assert not alive, alive
    finally:
        if live_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_an_unknown_hparams_search_is_refused_at_preflight() -> None:
    """The same pre-flight as recipe=nope (tests/recipes/runtime/test_bad_input.py runs that path end to end)."""
    with pytest.raises(
        RecipeError,
        match=r"^unknown hparams_search 'nope' in 'hparams_search=nope': choose one of "
        r"baseline, distill, prune$",
    ):
        preflight(["-m", "hparams_search=nope"])


def test_an_objective_the_task_does_not_log_is_refused_at_start_up(tmp_path: Path) -> None:
    """The sweeper runs the start-up checks on one trial's config before any trial (as the end-to-end
    refusals below show for the search space and the storage): task.monitor is checked there."""
    cfg = compose_train(tmp_path, "hparams_search=baseline", "task.monitor=val/nope")
    with pytest.raises(
        RecipeError,
        match=r"^task.monitor=val/nope is not a metric ClassifierModule logs: choose one "
        r"of val/acc, val/loss, train/acc, train/loss",
    ):
        check_startup(cfg, {"recipe": "baseline"})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["hparams_search=baseline", "task.optimizer.nope=interval(0,1)"],
            "the search space does not fit the config: task.optimizer.nope is not a config key",
        ),
        (
            ["hparams_search=baseline", "hydra.sweeper.storage=sqlite:////nonexistent/dir/optuna.db"],
            "hydra.sweeper.storage=sqlite:////nonexistent/dir/optuna.db cannot be opened",
        ),
    ],
    ids=["nonexistent-key", "unreachable-storage"],
)
def test_bad_search_input_is_refused_before_any_trial(tmp_path: Path, overrides: list[str], expected: str) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_module("recipes.train", "-m", f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=basic", *overrides)
    assert proc.returncode == 2
    assert_clean_failure(proc, sweep_dir, expected)  # no sweep dir: no study, no trial
