"""Repeated-run check for hangs: run `python -m recipes.train trainer=ddp_sim strategy=S` N times per
strategy, each under a hard timeout, and print how many runs finished, failed or hung.

    python scripts/soak.py --runs 30 [--timeout 180] [--strategies ddp,model_avg,async,pipeline] [OVERRIDE ...]
    python scripts/soak.py --runs 20 --strategies pipeline-stop-rank1,pipeline-stop-rank0,async-sigterm  # fault cases

A run is killed with its whole process group (its ranks, its fork server) when it outlives --timeout; if
py-spy is installed (on PATH or --py-spy), every process of a hung run has its Python stack printed first,
which shows which collective each rank was waiting in. Exit status: 0 only when every run succeeded.
Runs are short (digits, two epochs, the default callbacks and loggers) so that N runs per strategy stay cheap; extra Hydra
overrides given on the command line are added to every run.

Fault cases (CASES) are named in --strategies like a strategy: `async-sigterm` sends SIGTERM to an async run's
main process after its first checkpoint and counts the run ok only when it exits 143 with one line, no
traceback, and nothing of it left running 10 s later; `pipeline-stop-rank1` / `pipeline-stop-rank0` stop that
rank of a strategy=pipeline run with SIGSTOP (inside a step or between steps, alternately) and count the run ok
only when it ends within strategy.timeout + 10 s of the stop with exit 1, one line naming strategy.timeout,
no traceback and no process left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "model_avg", "async", "pipeline")
# Plain runs, as users start them (progress bar, model summary and loggers on: rank 0 alone draws the
# bar, which makes it the likeliest place for ranks to part ways), kept short.
TINY = ("trainer.max_epochs=2",)


def group_pids(pgid: int) -> list[int]:
    """The processes of one process group (Linux /proc), so that a hung run's ranks can be inspected."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return sorted(pids)


def dump_stacks(pgid: int, py_spy: str | None) -> str:
    if not py_spy:
        return "(install py-spy to see where each rank waited)"
    dumps = []
    for pid in group_pids(pgid):
        proc = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        dumps.append(f"--- pid {pid}\n{proc.stdout or proc.stderr}")
    return "\n".join(dumps)


def run_once(
    strategy: str, run_dir: Path, timeout: float, overrides: list[str], py_spy: str | None
) -> tuple[str, float, str]:
    """One run in its own session: ('ok' | 'failed' | 'hung', seconds, what to show if it went wrong)."""
    command = [
        sys.executable,
        "-m",
        "recipes.train",
        f"hydra.run.dir={run_dir}",
        "trainer=ddp_sim",
        f"strategy={strategy}",
        *TINY,
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = dump_stacks(proc.pid, py_spy)
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks and fork server share the run's process group
        _, err = proc.communicate()
        return "hung", time.perf_counter() - start, f"{stacks}\n{last_lines(err)}"
    seconds = time.perf_counter() - start
    return ("ok" if proc.returncode == 0 else "failed"), seconds, f"exit {proc.returncode}\n{last_lines(err)}"


# Fault cases, chosen with --strategies like a strategy: name -> function(run_dir, timeout, overrides, py_spy)
# returning (status, seconds, detail) as run_once does.
CASES: dict[str, Callable[[Path, float, list[str], str | None], tuple[str, float, str]]] = {}

# --- pipeline SIGSTOP: a stopped rank must end the run within strategy.timeout -----------------------------
STOP_TIMEOUT = 10  # strategy.timeout of these runs (s); the run must end within it + 10 s of the stop
# (twice it when rank 0 stops between steps: Lightning swallows the timeout of its per-batch broadcast)
_stop_in_step: dict[int, bool] = {}  # per rank, alternates: inside the next training step, or between steps


def pipeline_stopped_rank(
    run_dir: Path, timeout: float, overrides: list[str], py_spy: str | None, rank: int
) -> tuple[str, float, str]:
    """strategy=pipeline whose rank `rank` SIGSTOPs itself after its first batch (tests/helpers/stalled_rank.py),
    alternately inside its next step (the others wait in the schedule's point-to-point transfers) and
    between steps (they wait in a collective). 'ok' only for exit 1, one `error:` line naming
    strategy.timeout, the end within STOP_TIMEOUT + 10 s of the stop (2 * STOP_TIMEOUT + 10 s for a stopped
    rank 0, docs/reliability.md), and no process of the run left; seconds are counted from
    the stop."""
    in_step = _stop_in_step[rank] = not _stop_in_step.get(rank, False)
    pid_file = run_dir.with_suffix(".pid")
    stall = [
        "+callbacks.stall._target_=tests.helpers.stalled_rank.StalledRank",
        f"+callbacks.stall.pid_file={pid_file}",
    ]
    stall += [f"+callbacks.stall.rank={rank}", f"+callbacks.stall.in_step={in_step}"]
    command = [sys.executable, "-m", "recipes.train", f"hydra.run.dir={run_dir}", "trainer=ddp_sim"]
    command += ["strategy=pipeline", f"strategy.timeout={STOP_TIMEOUT}", *TINY, *overrides, *stall]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    where = f"rank {rank} stopped {'in a step' if in_step else 'between steps'}"
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = dump_stacks(proc.pid, py_spy)
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return "hung", time.perf_counter() - start, f"{where}\n{stacks}\n{last_lines(err)}"
    end = time.time()
    deadline = time.monotonic() + 5  # a rank killed at the end may take a moment to be reaped
    while group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_pids(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    if not pid_file.is_file():
        return "failed", time.perf_counter() - start, f"{where}: it never reached its first batch\n{last_lines(err)}"
    seconds = end - pid_file.stat().st_mtime
    limit = (2 if rank == 0 else 1) * STOP_TIMEOUT + 10
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    problems = [
        f"exit {proc.returncode}, not 1" if proc.returncode != 1 else "",
        f"{len(errors)} error lines" if len(errors) != 1 else "",
        ""
        if errors and f"strategy.timeout={STOP_TIMEOUT:g}s" in errors[0]
        else "the line does not name strategy.timeout",
        "a traceback" if "Traceback" in err else "",
        f"ended {seconds:.1f} s after the stop" if seconds > limit else "",
        f"processes left behind: {left}" if left else "",
    ]
    problems = [p for p in problems if p]
    return ("failed" if problems else "ok"), seconds, f"{where}: {'; '.join(problems)}\n{last_lines(err)}"


CASES["pipeline-stop-rank1"] = lambda *args: pipeline_stopped_rank(*args, rank=1)
CASES["pipeline-stop-rank0"] = lambda *args: pipeline_stopped_rank(*args, rank=0)


def last_lines(text: str, count: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def async_sigterm(run_dir: Path, timeout: float, overrides: list[str], py_spy: str | None) -> tuple[str, float, str]:
    """strategy=async under trainer=ddp_sim, SIGTERM to its main process once the first last.ckpt exists: 'ok'
    when it exits 143 within `timeout` with one `error:` line (the last, with the resume command), no traceback,
    and no process of its session (workers, fork server, resource tracker) running 10 s after it exited."""
    command = [sys.executable, "-m", "recipes.train", f"hydra.run.dir={run_dir}", "trainer=ddp_sim", "strategy=async"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    run_dir.mkdir(parents=True)
    stderr = run_dir.parent / f"{run_dir.name}.stderr"  # a file: a worker left behind would hold a pipe open
    start = time.perf_counter()
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [*command, "trainer.max_epochs=100", *overrides],  # long enough to be running when the signal comes
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():
            if proc.poll() is not None or time.perf_counter() - start > timeout:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        stacks = dump_stacks(proc.pid, py_spy)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "hung", time.perf_counter() - start, f"{stacks}\n{last_lines(stderr.read_text())}"
    seconds = time.perf_counter() - start
    exited = time.perf_counter()
    while (left := running(group_pids(proc.pid))) and time.perf_counter() - exited < 10:
        time.sleep(0.2)
    text = stderr.read_text()
    lines = text.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    problems = [
        *([f"exit {proc.returncode}, not 143"] if proc.returncode != 143 else []),
        *([f"{len(errors)} error lines"] if len(errors) != 1 else []),
        *(["a traceback"] if "Traceback" in text else []),
        *(["no resume command on the last line"] if not lines or "resume with: " not in lines[-1] else []),
        *([f"processes {left} still running 10 s after the run exited"] if left else []),
    ]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return ("failed" if problems else "ok"), seconds, f"{'; '.join(problems)}\n{last_lines(text)}"


def running(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (not exited, nor an exited process that nobody reaped)."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            alive.append(pid)
    return alive


CASES["async-sigterm"] = async_sigterm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per strategy")
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a run counts as hung")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategy names")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable (stacks of hung runs)")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs (printed at the end)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every run")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in CASES and not (REPO / "conf" / "strategy" / f"{s}.yaml").is_file()]
    if args.runs < 1 or unknown:
        choices = ", ".join([*STRATEGIES, *CASES])
        parser.error(f"--runs must be >= 1 and --strategies among {choices} (got {unknown or args.runs})")
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    counts: dict[str, Counter] = {s: Counter() for s in strategies}
    first_problem = ""
    for strategy in strategies:
        for index in range(args.runs):
            run_dir = root / f"{strategy}-{index}"
            if strategy in CASES:
                status, seconds, detail = CASES[strategy](run_dir, args.timeout, args.overrides, args.py_spy)
            else:
                status, seconds, detail = run_once(strategy, run_dir, args.timeout, args.overrides, args.py_spy)
            counts[strategy][status] += 1
            print(f"{strategy:>10} run {index + 1}/{args.runs}: {status} ({seconds:.1f} s)", flush=True)
            if status != "ok":
                first_problem = first_problem or f"{strategy} run {index + 1} {status}:\n{detail}"
                if status == "hung":
                    print(detail, flush=True)  # the stacks, while they are still news
    print(f"\n{'strategy':>10} {'runs':>5} {'ok':>5} {'failed':>7} {'hung':>5}")
    for strategy, count in counts.items():
        print(f"{strategy:>10} {args.runs:>5} {count['ok']:>5} {count['failed']:>7} {count['hung']:>5}")
    if first_problem:
        print(f"\nfirst problem: {first_problem}")
    if args.keep:
        print(f"run dirs: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if first_problem else 0


if __name__ == "__main__":
    sys.exit(main())
