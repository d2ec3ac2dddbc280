"""Threads on a shared machine: `python -m recipes.train`'s `threads` setting against torch's default
thread count, on a quiet machine and on one kept busy by other processes.

Two jobs, each the whole command as a user runs it (progress bar off, in a temporary run dir):
quickstart (`python -m recipes.train`, the defaults) and convnet (bench_overhead.py's convnet workload,
as a `recipes.train` run of a few epochs). Each runs in three thread modes:

- default: torch's default, `threads=<os.cpu_count()>` with GOMP_SPINCOUNT=300000 (libgomp's own spin:
  the project's shorter spin is off, since the user set it);
- auto: `threads=auto` (CPUs this process may use, shared among ranks and loader workers), with no
  OMP_NUM_THREADS, OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment;
- one: `threads=1`.

Two machine states: quiet, then busy with `--competitors` processes (default: the cores this benchmark
may use) spinning on float arithmetic, which the benchmark starts and always stops. Under load it also
runs every fixed thread count of `--fixed` (default 1..os.cpu_count(); 1 is `one`): the best of them is
what a user who tuned `threads=N` for that load would get. Modes alternate within each state (default,
auto, one, default, ...) after one warm-up each; the medians of the whole command's wall time (and of
results.json's fit_seconds) are compared:

    python scripts/bench_load.py                        # prints `ratio convnet busy auto / best fixed: X`, ...
    python scripts/bench_load.py --repeats 1 --jobs convnet --states quiet
    python scripts/bench_overhead.py --rows load        # the same, as a row of the overhead benchmark

Targets: busy auto / best fixed <= 1.3 per job, quiet auto / default <= 1.05 on convnet. Without a
`threads` key in conf/train.yaml (a checkout before it) only the default mode runs, with torch's own
thread count. Exits 1 with the failing command's stderr if a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from launch import alternated, train

REPO = Path(__file__).resolve().parent.parent
OMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
CONVNET = ["model=convnet", "data.image_size=32", "data.batch_size=128"]  # bench_overhead.py's convnet workload
JOBS = {"quickstart": [], "convnet": [*CONVNET, "trainer.max_epochs=4"]}
# One competitor: a pure-Python loop of float multiply-adds, one core busy until it is killed.
BUSY = "x = 0.5\nwhile True:\n    x = (x * 1.000001 + 0.1) % 7.0"


def has_threads_knob() -> bool:
    """Whether this checkout's conf/train.yaml has the top-level `threads` setting."""
    sys.path.insert(0, str(REPO))  # this checkout's conf package
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="conf", version_base="1.3"):
        return "threads" in compose("train").keys()


def modes(knob: bool, fixed: list[int], busy: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (overrides, environment) of each thread mode; the fixed counts only under load."""
    clean = {k: v for k, v in os.environ.items() if k not in OMP_VARS} | {"PYTHONPATH": str(REPO)}
    default = ([f"threads={os.cpu_count()}"] if knob else [], clean | {"GOMP_SPINCOUNT": "300000"})
    if not knob:
        return {"default": default}
    found = {"default": default, "auto": (["threads=auto"], clean), "one": (["threads=1"], clean)}
    for n in fixed if busy else []:
        if n != 1:
            found[f"threads={n}"] = ([f"threads={n}"], clean)
    return found


def timed_run(tmp: Path, overrides: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds of the whole command, results.json's fit_seconds or nan) of one run in a fresh dir."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    start = time.perf_counter()
    results = train(run_dir, *overrides, env=env)
    wall = time.perf_counter() - start
    shutil.rmtree(run_dir)
    fit = results.get("fit_seconds")
    return wall, float("nan") if fit is None else fit


@contextlib.contextmanager
def competitors(count: int) -> Iterator[None]:
    """`count` busy processes in one process group, killed on the way out (also on SIGTERM)."""
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for _ in range(count):
            group = procs[0].pid if procs else 0  # the first one's group
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL, process_group=group))
        time.sleep(1)  # let them reach full speed before the warm-up round
        yield
    finally:
        if procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(procs[0].pid, signal.SIGKILL)
            for proc in procs:
                proc.wait()
        signal.signal(signal.SIGTERM, previous)


def load() -> str:
    """The machine's load averages, printed beside each state."""
    return "load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min)".format(*os.getloadavg())


def measure_state(state: str, args: argparse.Namespace, knob: bool, tmp: Path) -> dict:
    """medians[job][mode] = (wall, fit) of one machine state."""
    busy = state == "busy"
    found: dict[str, dict[str, tuple[float, float]]] = {}
    with competitors(args.competitors) if busy else contextlib.nullcontext():
        print(f"{state}: {f'{args.competitors} competitor processes, ' if busy else ''}{load()}", flush=True)
        for job in args.jobs:
            runs = {
                mode: (lambda o=[*JOBS[job], *overrides], e=env: timed_run(tmp, o, e))
                for mode, (overrides, env) in modes(knob, args.fixed, busy).items()
            }
            values = alternated(runs, args.repeats)
            found[job] = {m: tuple(statistics.median(col) for col in zip(*v)) for m, v in values.items()}
        print(f"{state}: done, {load()}", flush=True)
    return found


def report(medians: dict[str, dict], args: argparse.Namespace) -> None:
    """The table of medians per job, mode and state, then the `ratio ...: X` lines the targets are about."""
    states = list(medians)
    print(f"\nmedians of {args.repeats} alternated runs, seconds: whole command / fit_seconds")
    print(f"{'job':<12}{'mode':<12}" + "".join(f"{s:>20}" for s in states))
    for job in args.jobs:
        names = dict.fromkeys(m for s in states for m in medians[s][job])
        for mode in names:
            cells = [medians[s][job].get(mode) for s in states]
            print(
                f"{job:<12}{mode:<12}" + "".join(f"{c[0]:>11.2f} / {c[1]:>6.2f}" if c else f"{'-':>20}" for c in cells)
            )
    for job in args.jobs:
        quiet, busy = medians.get("quiet", {}).get(job, {}), medians.get("busy", {}).get(job, {})
        fixed = {m: v[0] for m, v in busy.items() if m == "one" or m.startswith("threads=")}
        if "auto" in busy and fixed:
            best = min(fixed, key=fixed.get)
            ratio = busy["auto"][0] / fixed[best]
            print(f"ratio {job} busy auto / best fixed: {ratio:.3f} (best fixed: {best}; target <= 1.3)")
        if "auto" in quiet:
            target = " (target <= 1.05)" if job == "convnet" else ""
            print(f"ratio {job} quiet auto / default: {quiet['auto'][0] / quiet['default'][0]:.3f}{target}")


def main(argv: list[str] | None = None) -> None:
    """Measure and print; `argv` as on the command line (None: sys.argv)."""
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each mode, after one warm-up")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--states", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    parser.add_argument(
        "--competitors",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="busy processes of the busy state (default: the cores this benchmark may use)",
    )
    parser.add_argument(
        "--fixed",
        type=int,
        nargs="+",
        default=list(range(1, cpus + 1)),
        help=f"fixed thread counts tried under load (default 1..{cpus})",
    )
    args = parser.parse_args(argv)
    knob = has_threads_knob()
    if not knob:
        print("no `threads` key in conf/train.yaml: only the default mode runs (torch's own thread count)")
    with tempfile.TemporaryDirectory() as tmp:
        medians = {state: measure_state(state, args, knob, Path(tmp)) for state in args.states}
    report(medians, args)


if __name__ == "__main__":
    main()
