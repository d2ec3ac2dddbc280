"""Bad-input fault check: run each case as a user would (real commands, fresh processes, a temp dir as
the working dir) and count it passed only when it is refused as the contract says (docs/reliability.md):
exit 2, exactly one stderr line and it starts `error:`, no `Traceback` anywhere in its output, and the
files it must leave alone byte for byte as they were (every file hashed before and after).

    python scripts/faults.py                                   # every case
    python scripts/faults.py --cases resume-other-recipe,rerun-same-recipe [--timeout 300] [--keep]
    python scripts/faults.py --list

Cases (CASES):
  resume-other-recipe  a finished baseline run (trainer.max_epochs=1), then `recipe=prune ckpt_path=last` in it
  rerun-same-recipe    the same finished run, then the same recipe again in it (no ckpt_path, no overwrite=true)
  evaluate-no-ckpt, export-no-ckpt, attack-no-ckpt, generate-no-ckpt
                       `python -m recipes.evaluate` (export, attack, generate) without ckpt_path
  slurm-sweep-no-slurm `--multirun hydra/launcher=submitit_slurm hparams_search=baseline` without SLURM: no
                       sweep dir and no study database created
  mlflow-unreachable   `logger=mlflow logger.mlflow.tracking_uri=http://127.0.0.1:5999`, nothing listening: refused
                       within MLFLOW_LIMIT_S seconds, no run dir left

The finished run of the first two cases is trained once, and each case works on its own copy of it. Where
a case watches "the working dir", nothing may be created in it (no outputs/, no run or sweep dir).
One line per case (PASS or FAIL, the seconds it took, why it failed); exit status 0 only when every
selected case passed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = ("callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "callbacks.model_summary=null")
# An unreachable tracking server must be given up on quickly: the refusal may take this long in all,
# Python's start-up (import torch, lightning) included.
MLFLOW_LIMIT_S = 20.0


@dataclass(frozen=True)
class Case:
    """`command(work, finished)`: the arguments after `python -m`, and the folder that must stay as it
    was (`finished`: this case's copy of the finished run, or None when the case needs none)."""

    command: Callable[[Path, Path | None], tuple[list[str], Path]]
    needs_run: bool = False
    limit_s: float | None = None


def _no_ckpt(module: str) -> Case:
    return Case(lambda work, _: ([module], work))


CASES = {
    "resume-other-recipe": Case(
        lambda work, run: (["recipes.train", f"hydra.run.dir={run}", *QUIET, "recipe=prune", "ckpt_path=last"], run),
        needs_run=True,
    ),
    "rerun-same-recipe": Case(
        lambda work, run: (["recipes.train", f"hydra.run.dir={run}", *QUIET, "trainer.max_epochs=1"], run),
        needs_run=True,
    ),
    "evaluate-no-ckpt": _no_ckpt("recipes.evaluate"),
    "export-no-ckpt": _no_ckpt("recipes.export"),
    "attack-no-ckpt": _no_ckpt("recipes.attack"),
    "generate-no-ckpt": _no_ckpt("recipes.generate"),
    "slurm-sweep-no-slurm": Case(
        lambda work, _: (
            ["recipes.train", "--multirun", "hydra/launcher=submitit_slurm", "hparams_search=baseline"],
            work,
        )
    ),
    "mlflow-unreachable": Case(
        lambda work, _: (
            ["recipes.train", *QUIET, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:5999"],
            work,
        ),
        limit_s=MLFLOW_LIMIT_S,
    ),
}


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path, with the sha256 of its bytes (folders by name)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return found


def user_env() -> dict[str, str]:
    """This environment as a user's shell has it, the repository importable, no SLURM job around and
    outputs/ where the command runs (RECIPES_OUTPUT_DIR unset)."""
    drop = ("HYDRA_FULL_ERROR", "RECIPES_OUTPUT_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def python_m(args: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    """`python -m ARGS` in `cwd`; (None, seconds) when it outlived `timeout`."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", *args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    return proc, time.monotonic() - start


def finished_run(base: Path, timeout: float) -> Path:
    """A finished baseline run (trainer.max_epochs=1), trained once for every case that needs one."""
    run = base / "finished"
    proc, _ = python_m(["recipes.train", f"hydra.run.dir={run}", *QUIET, "trainer.max_epochs=1"], base, timeout)
    if proc is None or proc.returncode != 0 or not (run / "results.json").is_file():
        tail = "timed out" if proc is None else proc.stderr[-2000:]
        sys.exit(f"could not train the finished run the resume cases need: {tail}")
    return run


def check(name: str, case: Case, base: Path, run: Path | None, timeout: float) -> tuple[bool, str]:
    """Run one case in its own working dir; (passed, why not)."""
    work = base / name
    work.mkdir()
    copy = Path(shutil.copytree(run, work / "run")) if case.needs_run and run is not None else None
    args, watched = case.command(work, copy)
    before = tree(watched)
    proc, seconds = python_m(args, work, timeout)  # past its limit_s too: how long it took is worth seeing
    took = f"{seconds:.1f} s"
    if proc is None:
        return False, f"{took}: still running after --timeout {timeout:.0f} s"
    lines = proc.stderr.strip().splitlines()
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}, not 2")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        problems.append("a Traceback")
    if len(lines) != 1 or not lines[0].startswith("error:"):
        problems.append(f"{len(lines)} stderr lines, the last {lines[-1][:200]!r}" if lines else "no stderr line")
    after = tree(watched)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        problems.append(f"{len(changed)} files changed in {watched}, e.g. {changed[:3]}")
    if case.limit_s is not None and seconds > case.limit_s:
        problems.append(f"took longer than {case.limit_s:.0f} s")
    if problems:
        return False, f"{took}: " + "; ".join(problems)
    return True, f"{took}: {lines[0][:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one command may take")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(CASES))
        return 0
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    base = Path(tempfile.mkdtemp(prefix="faults_"))
    try:
        run = finished_run(base, args.timeout) if any(CASES[n].needs_run for n in names) else None
        failed = 0
        for name in names:
            passed, detail = check(name, CASES[name], base, run, args.timeout)
            failed += not passed
            print(f"{'PASS' if passed else 'FAIL'} {name} ({detail})", flush=True)
        print(f"{len(names) - failed} of {len(names)} cases passed")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"temp dir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
