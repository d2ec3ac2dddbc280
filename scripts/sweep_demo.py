"""The hyper-parameter search figure: a 20-trial Optuna sweep of recipe=baseline on digits, 2 trials at
once (hparams_search=baseline: Hydra's joblib launcher), killed (SIGKILL to the whole sweep, trials
included) once 8 trials have finished, then restarted with the same command; then its best trial
against the default config's val/acc.

Every run is a `python -m recipes.train` command as a user types it. Prints: the default's best val/acc,
the trials finished when the sweep was killed, how many trials the restart ran (it should be the rest:
20 minus those), the study's total, and the best trial with its overrides (recipes.summarize).

    python scripts/sweep_demo.py                         # the recipe's 20 epochs per trial
    python scripts/sweep_demo.py --epochs 10 --out outputs/sweep_demo   # shorter trials on a busy machine
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from launch import QUIET, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the recipes package, run from a checkout

from recipes.summarize import summarize
from recipes.sweep.study import INTERRUPTED, open_storage


def trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the sweep's study, read from its SQLite database (opened as the sweep opens it, under
    its lock: opening a database the sweep is still creating would race it)."""
    if not db.is_file():
        return []
    try:
        storage = open_storage(f"sqlite:///{db}")
        return optuna.load_study(study_name="baseline", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def finished_trials(db: Path) -> int:
    """Trials that ran to an end (complete or failed), not those a kill cut off (recipes/sweep/study.py)."""
    return len(
        [
            t
            for t in trials(db)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get(INTERRUPTED)
        ]
    )


def sweep(sweep_dir: Path, args: argparse.Namespace, kill_after: int | None) -> tuple[int, float]:
    """Run the sweep command; with kill_after, SIGKILL its process group once that many trials ended.
    Returns the exit status and the seconds it ran."""
    cmd = [
        sys.executable,
        "-m",
        "recipes.train",
        "-m",
        "hparams_search=baseline",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.n_jobs={args.jobs}",
        f"trainer.max_epochs={args.epochs}",
        *QUIET,
    ]
    start = time.monotonic()
    with open(sweep_dir.parent / ("sweep_killed.log" if kill_after else "sweep_resumed.log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(1.0)
            if kill_after is not None and finished_trials(sweep_dir / "optuna.db") >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its joblib workers, as a crash or scancel would
                proc.wait()
                break
    return proc.returncode, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial and for the default (recipe: 20)")
    parser.add_argument("--out", type=Path, default=Path("outputs/sweep_demo"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    sweep_dir, db = args.out / "sweep", args.out / "sweep" / "optuna.db"
    sweep_dir.mkdir()

    default = train(args.out / "default", f"trainer.max_epochs={args.epochs}")["monitor"]["best"]
    print(f"default config: best val/acc {default:.4f} ({args.epochs} epochs)")

    status, seconds = sweep(sweep_dir, args, args.kill_after)
    killed_at, asked = finished_trials(db), len(trials(db))
    print(
        f"sweep killed (exit {status}) after {seconds:.0f} s: {killed_at} trials finished, "
        f"{asked - killed_at} cut off mid-run"
    )
    status, seconds = sweep(sweep_dir, args, None)
    finished, launched = finished_trials(db), len(trials(db)) - asked
    print(
        f"restarted sweep (exit {status}, {seconds:.0f} s) launched {launched} trials and finished "
        f"{finished - killed_at}: the remaining {args.trials} - {killed_at} = {args.trials - killed_at}; "
        f"the study has {finished} finished trials"
    )
    best = summarize(sweep_dir)
    if best is not None:
        verdict = "beats" if best.objective > default else "equals" if best.objective == default else "is below"
        print(f"best trial val/acc {best.objective:.4f} {verdict} the default's {default:.4f}")


if __name__ == "__main__":
    main()
