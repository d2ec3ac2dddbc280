"""A killed-and-resumed run ends with the uninterrupted run's csv/metrics.csv, row for row and byte for
byte, and with its checkpoint files: the losses summed since the last `train/loss` ride in the
checkpoint, the rows the interrupted run had logged at the resumed step are replaced rather than
repeated, and a best checkpoint written just before a kill is replaced rather than kept beside a -v1
copy. Faults come from tests/helpers/kill_at.py: a signal after a training step, or SIGKILL half-way through
writing a checkpoint file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from modules.base import TRAIN_LOSS_KEY
from recipes.assembly.loggers import HistoryCSVLogger
from tests.helpers.runs import copy_run, train, train_in_process, train_ok_in_process

# 20 steps an epoch (digits, batches of 64) and train/loss every 7 steps (at steps 6, 13, 20, 27, ...):
# the checkpoint after epoch 0 (step 20) holds six losses not yet logged, and epoch 1's first rows (its
# learning rate, the train/loss of its first step) are logged at the resumed step itself.
RUN = ("trainer.max_epochs=2", "trainer.log_every_n_steps=7")
KILL = "+callbacks.kill._target_=tests.helpers.kill_at.KillAt"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_ok_in_process(run_dir, *RUN)
    return run_dir


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def checkpoint_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "checkpoints").iterdir())


def assert_same_run(run_dir: Path, uninterrupted: Path) -> None:
    """The same metrics.csv (every row, column and value, byte for byte) and the same checkpoint files
    holding the same weights."""
    assert metrics_rows(run_dir) == metrics_rows(uninterrupted)
    assert (run_dir / "csv" / "metrics.csv").read_bytes() == (uninterrupted / "csv" / "metrics.csv").read_bytes()
    assert checkpoint_files(run_dir) == checkpoint_files(uninterrupted)
    for name in checkpoint_files(uninterrupted):
        ours = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        theirs = torch.load(uninterrupted / "checkpoints" / name, weights_only=True)
        for key, weight in theirs["state_dict"].items():
            assert torch.equal(ours["state_dict"][key], weight), (name, key)


def stop(run_dir: Path, signal: str, *fault: str) -> int:
    """The run, faulted: SIGTERM in this process (the run's handler turns it into exit 143), SIGKILL in
    a subprocess; returns the exit status."""
    overrides = (*RUN, KILL, f"+callbacks.kill.signal={signal}", *fault)
    return (train_in_process if signal == "SIGTERM" else train)(run_dir, *overrides).returncode


@pytest.mark.parametrize(
    "signal", ["SIGTERM", pytest.param("SIGKILL", marks=pytest.mark.slow)], ids=["sigterm", "kill-9"]
)
def test_a_run_stopped_mid_epoch_resumes_to_the_same_metrics_csv(
    signal: str, uninterrupted: Path, run_dir: Path
) -> None:
    """Stopped at step 25 (epoch 1), resumed from epoch 0's last.ckpt with ckpt_path=last."""
    assert stop(run_dir, signal, "+callbacks.kill.step=25") == (143 if signal == "SIGTERM" else -9)
    at_resumed_step = [row for row in metrics_rows(run_dir) if row["step"] == "20"]
    assert {"lr-AdamW", "train/loss"} <= {k for row in at_resumed_step for k, v in row.items() if v and k != "step"}
    train_ok_in_process(run_dir, *RUN, "ckpt_path=last")
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize(
    ("save", "rerun"),
    [(2, ()), pytest.param(4, ("ckpt_path=last",), marks=pytest.mark.slow)],
    ids=["first-epoch-then-rerun", "second-epoch-then-resume"],
)
def test_a_kill_while_last_ckpt_is_written_leaves_no_stale_or_versioned_best(
    save: int, rerun: tuple[str, ...], uninterrupted: Path, run_dir: Path
) -> None:
    """SIGKILL half-way through last.ckpt, right after the epoch's best checkpoint was written. After
    epoch 0 there is nothing to resume (no last.ckpt), so the run is started again; after epoch 1 it
    resumes epoch 0's last.ckpt. Either way the best checkpoint that the kill left is replaced (same
    name: same epoch, same score), not kept beside an -v1 copy or left over, and the leftover temp file goes."""
    assert stop(run_dir, "SIGKILL", f"+callbacks.kill.save={save}") == -9
    files = checkpoint_files(run_dir)
    assert any(name.startswith(f"epoch00{save // 2 - 1}-") for name in files), files  # the best, complete
    assert any(name.endswith(".partial") for name in files), files  # last.ckpt, killed mid-write
    train_ok_in_process(run_dir, *RUN, *rerun)
    assert_same_run(run_dir, uninterrupted)


def test_a_checkpoint_without_the_train_loss_sum_still_resumes(two_epoch_run: Path, tmp_path: Path) -> None:
    """A checkpoint written before the sum was kept (no such entry) resumes: the sum starts at zero."""
    run_dir = copy_run(two_epoch_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert set(checkpoint[TRAIN_LOSS_KEY]) == {"sum", "count"}
    del checkpoint[TRAIN_LOSS_KEY]
    torch.save(checkpoint, last)
    train_ok_in_process(run_dir, "trainer.max_epochs=3", "ckpt_path=last")
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_rows_at_the_resumed_step_are_replaced_only_when_logged_again(tmp_path: Path) -> None:
    """Rows at the resumed step that the resumed run logs again (a checkpoint written at an epoch's end:
    the next epoch's first rows) are replaced by its rows; a final test's rows there stay; when the
    resumed run logs from the next step on (a checkpoint written at validation end), all rows stay."""

    def write(rows: list[tuple[int, dict[str, float]]]) -> None:
        logger = HistoryCSVLogger(tmp_path, name="csv", version="")
        for step, metrics in rows:
            logger.log_metrics(metrics, step=step)
        logger.save()

    def steps_and_names() -> list[tuple[str, str]]:
        return [
            (row["step"], "+".join(k for k, v in row.items() if v and k != "step")) for row in metrics_rows(tmp_path)
        ]

    interrupted = [(19, {"val/acc": 0.5}), (20, {"test/acc": 0.8}), (20, {"lr": 0.1}), (20, {"train/loss": 2.0})]
    write(interrupted)
    resumed = HistoryCSVLogger(tmp_path, name="csv", version="")
    resumed.continue_from(20)
    resumed.log_metrics({"test/acc": 0.9}, step=20)  # a test row alone does not count as logging the step again
    resumed.save()
    resumed.log_metrics({"lr": 0.1}, step=20)
    resumed.log_metrics({"train/loss": 1.0}, step=20)
    resumed.save()
    assert steps_and_names() == [
        ("19", "val/acc"),
        ("20", "test/acc"),
        ("20", "test/acc"),
        ("20", "lr"),
        ("20", "train/loss"),
    ]
    assert metrics_rows(tmp_path)[-1]["train/loss"] == "1.0"

    (tmp_path / "csv" / "metrics.csv").unlink()
    write(interrupted)
    resumed = HistoryCSVLogger(tmp_path, name="csv", version="")
    resumed.continue_from(20)
    resumed.log_metrics({"lr": 0.1}, step=21)
    resumed.save()
    assert steps_and_names() == [
        ("19", "val/acc"),
        ("20", "test/acc"),
        ("20", "lr"),
        ("20", "train/loss"),
        ("21", "lr"),
    ]


@pytest.mark.slow
def test_a_pruning_run_stopped_mid_ramp_resumes_to_the_same_metrics_csv(tmp_path: Path) -> None:
    """recipe=prune, stopped by SIGTERM at step 45 (epoch 2, while the sparsity ramps up) and resumed
    from epoch 1's last.ckpt: the same metrics.csv and checkpoint files as the run left alone."""
    prune = (
        "recipe=prune",
        "trainer.max_epochs=4",
        "compress.prune.start_epoch=1",
        "compress.prune.end_epoch=3",
        "trainer.log_every_n_steps=7",
    )
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    train_ok_in_process(uninterrupted, *prune)
    faulted = train_in_process(stopped, *prune, KILL, "+callbacks.kill.signal=SIGTERM", "+callbacks.kill.step=45")
    assert faulted.returncode == 143, faulted.stderr[-2000:]
    train_ok_in_process(stopped, *prune, "ckpt_path=last")
    assert_same_run(stopped, uninterrupted)
