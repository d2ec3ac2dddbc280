"""Run files under failure: a checkpoint save that fails mid-way leaves the previous file, a run whose disk
fills or whose checkpoints/ turns read-only stops with one line, a corrupt last.ckpt is named with the
checkpoint to resume from instead, and a resume keeps csv/metrics.csv's history."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from recipes.assembly.loggers import HistoryCSVLogger
from recipes.assembly.training import build_training
from recipes.checkpointing.files import AtomicCheckpointIO, CheckpointWriteError
from recipes.checkpointing.format import resolve_ckpt_path
from recipes.errors import RecipeError
from recipes.runtime.created_dirs import note
from tests.helpers.build import compose_train
from tests.helpers.faults import FILLER, skip_unless_read_only_works, small_disk, writable_again
from tests.helpers.runs import copy_run, train, train_in_process, train_ok, train_ok_in_process


def rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv rows without their empty cells (a column added later leaves earlier cells empty)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(file)]


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(text in line for text in expected), line
    return line


@pytest.fixture
def two_epochs(two_epoch_run: Path) -> Path:
    """A finished 2-epoch run (last.ckpt and the best checkpoint both at epoch 1); tests resume copies."""
    return two_epoch_run


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills mid-save (ENOSPC after half the bytes): the save raises CheckpointWriteError (a
    RunStopped: one line, exit 1), the previous checkpoint is intact, no temp file is left, and a temp file left by a killed save is removed by the next save."""
    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 1}, target)
    before = target.read_bytes()

    def full_disk(obj: object, file) -> None:
        file.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"could not be written \(No space left on device\)") as caught:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2}, target)
    assert caught.value.remedy == "free some space on its disk"
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    monkeypatch.undo()
    (target.parent / ".epoch003-acc0.9.ckpt.dead.partial").write_bytes(b"killed mid-save")
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # shareable like any file, not mkstemp's 0600


FAULT_RUN = ["trainer.max_epochs=2", "callbacks.model_summary=null"]


def assert_stopped_with_the_last_good_checkpoint(
    proc: subprocess.CompletedProcess, run_dir: Path, *expected: str
) -> None:
    """Exit 1 (a fault mid-run), one `error:` line and no traceback; the line names the failed file, the
    reason, what to do and the resume command; last.ckpt is the one from epoch 0 and loads; no temp file."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    line = errors[0]
    checkpoints = run_dir / "checkpoints"
    assert line.startswith(f"error: checkpoint {checkpoints}/") and "could not be written (" in line, line
    assert all(text in line for text in expected), line
    assert line.endswith(f"resume with: {line.split('resume with: ', 1)[1]}") and line.endswith(
        f"hydra.run.dir={run_dir} ckpt_path=last"
    ), line
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list(checkpoints.glob(".*.partial")), sorted(p.name for p in checkpoints.iterdir())


def fill_disk_at(epoch: int, disk: Path) -> list[str]:
    """Overrides that fill `disk` at the start of `epoch` (tests.helpers.faults.FillDiskAt)."""
    return [
        "+callbacks.fault._target_=tests.helpers.faults.FillDiskAt",
        f"+callbacks.fault.epoch={epoch}",
        f"+callbacks.fault.folder={disk}",
    ]


def test_a_disk_that_fills_mid_run_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """A real full disk (a 32 MB tmpfs, filled at the start of epoch 1 to 64 KB short of a checkpoint):
    torch's writer fails with ENOSPC and then its own RuntimeError, yet the run ends with one line, exit 1,
    and last.ckpt from epoch 0 resumes it."""
    with small_disk(tmp_path / "disk") as disk:
        run_dir = disk / "run"
        fault = fill_disk_at(1, disk)
        proc = train_in_process(run_dir, *FAULT_RUN, *fault)
        assert (disk / FILLER).is_file()
        assert_stopped_with_the_last_good_checkpoint(
            proc, run_dir, "(No space left on device)", "free some space on its disk, then resume with: "
        )


@pytest.mark.slow  # a DDP launch in a subprocess: ~15 s
def test_a_disk_that_fills_under_ddp_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    """trainer=ddp_sim (2 ranks, Lightning's subprocess launcher): rank 0's failed save ends the run with
    the same one line and exit 1, and no rank is left 10 s later."""
    with small_disk(tmp_path / "disk") as disk:
        run_dir = disk / "run"
        fault = fill_disk_at(1, disk)
        proc = train(run_dir, "trainer=ddp_sim", *FAULT_RUN, *fault, timeout=240)
        assert_stopped_with_the_last_good_checkpoint(proc, run_dir, "(No space left on device)", "free some space")
        deadline = time.monotonic() + 10
        while (
            f"hydra.run.dir={run_dir}" in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        ):
            assert time.monotonic() < deadline, "a rank outlived the run by 10 s"
            time.sleep(0.2)


def test_a_failed_checkpoint_write_stops_with_one_line_wherever_a_disk_can_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same stop without a tmpfs (no root needed): every torch.save after epoch 0's two checkpoints
    writes part of the file and fails with ENOSPC."""
    saves, save = [], torch.save

    def filling(obj: object, file, *args, **kwargs) -> None:
        saves.append(file)
        if len(saves) <= 2:  # epoch 0: the best checkpoint and last.ckpt
            return save(obj, file, *args, **kwargs)
        file.write(b"PK\x03\x04 part of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", filling)
    run_dir = tmp_path / "run"
    proc = train_in_process(run_dir, *FAULT_RUN)
    monkeypatch.undo()
    assert_stopped_with_the_last_good_checkpoint(proc, run_dir, "(No space left on device)", "free some space")


def test_a_checkpoints_folder_made_read_only_mid_run_stops_with_one_line(tmp_path: Path) -> None:
    """checkpoints/ turns read-only at the start of epoch 1 (a read-only bind mount as root, else chmod):
    one line naming the reason and the fix, exit 1, last.ckpt from epoch 0 intact."""
    skip_unless_read_only_works(tmp_path / "scratch")
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    fault = [
        "+callbacks.fault._target_=tests.helpers.faults.ReadOnlyAt",
        "+callbacks.fault.epoch=1",
        f"+callbacks.fault.folder={checkpoints}",
    ]
    try:
        proc = train_in_process(run_dir, *FAULT_RUN, *fault)
    finally:
        writable_again(checkpoints)
    reason = "(Read-only file system)" if os.geteuid() == 0 else "(Permission denied)"
    assert_stopped_with_the_last_good_checkpoint(proc, run_dir, reason, "make its folder writable, then resume")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("strategy", ["single", "ddp", "model_avg", "async", "pipeline"])
def test_every_strategy_writes_checkpoints_atomically(strategy: str, tmp_path: Path) -> None:
    """The trainer's CheckpointIO plugin reaches every strategy, the project's own ones included."""
    devices = [] if strategy == "single" else ["trainer=ddp_sim"]
    cfg = compose_train(tmp_path, *devices, f"strategy={strategy}")
    parts = build_training(cfg, dict(HydraConfig.get().runtime.choices))
    assert isinstance(parts.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_corrupt_last_ckpt_names_the_newest_readable_one(damage: str, two_epochs: Path, tmp_path: Path) -> None:
    run_dir = copy_run(two_epochs, tmp_path)
    checkpoints = run_dir / "checkpoints"
    (best,) = [p for p in checkpoints.glob("epoch*.ckpt")]
    older = checkpoints / "epoch000-acc0.1000.ckpt"  # readable, but fewer steps than the best
    ckpt = torch.load(best, weights_only=True)
    torch.save({**ckpt, "global_step": 20, "epoch": 0}, older)
    os.utime(older, (time.time() + 60,) * 2)  # the newest file, yet not the furthest trained
    (checkpoints / "epoch002-acc0.9000.ckpt").write_bytes(b"")  # a save killed by a full disk
    last = checkpoints / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096)}[damage])
    with pytest.raises(RecipeError) as caught:
        resolve_ckpt_path("last", run_dir)
    message = str(caught.value)
    assert message.startswith(f"ckpt_path=last: {last} is corrupt (") and "\n" not in message, message
    assert message.endswith(f"the newest readable checkpoint is {best}: resume with ckpt_path={best}"), message
    for path in [older, best]:
        path.unlink()
    with pytest.raises(RecipeError, match="there is no other readable checkpoint beside it"):
        resolve_ckpt_path("last", run_dir)


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_resume_after_a_corrupt_last_ckpt_from_the_named_checkpoint(two_epochs: Path, tmp_path: Path) -> None:
    """A truncated last.ckpt: `ckpt_path=last` exits 2 with one line naming the good checkpoint, keeps
    the run dir, and resuming from the named checkpoint trains on."""
    run_dir = copy_run(two_epochs, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    files_before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    line = assert_one_line_error(train(run_dir, "trainer.max_epochs=3", "ckpt_path=last"), "is corrupt")
    named = line.rsplit("ckpt_path=", 1)[1]
    assert Path(named).parent == last.parent and Path(named).name.startswith("epoch001-")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files_before  # nothing deleted
    train_ok(run_dir, "trainer.max_epochs=3", f"ckpt_path={named}")
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_resume_where_no_epoch_finished_says_to_run_again(tmp_path: Path) -> None:
    """A run dir whose run was killed before its first last.ckpt: nothing to resume, and the line says so."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for run_dir in (tmp_path / "run", tmp_path / "elsewhere"):
        note(run_dir)  # what the run-dir check records before the run starts: one existed, one is new
        run_dir.mkdir(exist_ok=True)
    with pytest.raises(RecipeError, match=r"no epoch of the run in .* finished.*run it again without ckpt_path"):
        resolve_ckpt_path("last", tmp_path / "run")
    with pytest.raises(RecipeError, match=r"pass hydra.run.dir=<the run dir to resume>"):
        resolve_ckpt_path("last", tmp_path / "elsewhere")


def test_a_resume_appends_to_metrics_csv(two_epochs: Path, tmp_path: Path) -> None:
    """2 epochs, then `ckpt_path=last` to 3: metrics.csv holds epochs 0..2, the first rows unchanged."""
    run_dir = copy_run(two_epochs, tmp_path)
    before = rows(run_dir)
    train_ok_in_process(run_dir, "trainer.max_epochs=3", "ckpt_path=last")
    after = rows(run_dir)
    assert after[: len(before)] == before
    assert sorted({int(row["epoch"]) for row in after if "epoch" in row}) == [0, 1, 2]
    assert [row["step"] for row in after if "test/acc" in row] == ["40", "60"]  # each run's final test


def test_a_resume_that_fails_at_start_up_leaves_metrics_csv_as_it_was(two_epochs: Path, tmp_path: Path) -> None:
    """The latest start-up refusal (the checkpoint's net does not fit the configured model): the
    logger already exists by then, yet metrics.csv is byte-identical."""
    run_dir = copy_run(two_epochs, tmp_path)
    before = (run_dir / "csv" / "metrics.csv").read_bytes()
    assert_one_line_error(
        train_in_process(run_dir, "model=lenet5", "ckpt_path=last"), "does not fit the configured model"
    )
    assert (run_dir / "csv" / "metrics.csv").read_bytes() == before


def test_rows_after_the_resumed_step_go_and_new_columns_keep_the_old_ones(tmp_path: Path) -> None:
    """continue_from(step): rows logged after the checkpoint (the rest of an interrupted epoch, which
    the resumed run logs again) go, the rest stay; a new column keeps the file's old ones;
    continue_from(None), a fresh run, starts the file over."""
    first = HistoryCSVLogger(tmp_path, name="csv", version="")
    for step, metrics in [(19, {"val/acc": 0.5}), (39, {"val/acc": 0.7}), (40, {"lr": 0.1}), (50, {"train/loss": 9.0})]:
        first.log_metrics(metrics, step=step)
    first.save()
    resumed = HistoryCSVLogger(tmp_path, name="csv", version="")
    resumed.continue_from(40)
    resumed.log_metrics({"test/acc": 0.9}, step=60)
    resumed.save()
    assert rows(tmp_path) == [
        {"step": "19", "val/acc": "0.5"},
        {"step": "39", "val/acc": "0.7"},
        {"step": "40", "lr": "0.1"},
        {"step": "60", "test/acc": "0.9"},
    ]
    HistoryCSVLogger(tmp_path, name="csv", version="").continue_from(None)
    assert not (tmp_path / "csv" / "metrics.csv").exists()
