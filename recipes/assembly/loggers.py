"""A CSV logger whose metrics.csv survives a resume.

Lightning's CSVLogger deletes an existing metrics.csv as soon as its writer is created (when the log
dir is not empty): `ckpt_path=last` lost the earlier epochs, and a resume that failed at start-up lost
them all. This logger never deletes at creation; the run says, once its start-up checks have passed,
whether it starts over (fresh: the old file goes) or continues from a checkpoint (the file is kept).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from recipes.runtime.atomic import atomic_write

__all__ = ["HistoryCSVLogger", "continue_history"]


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, minus the delete at creation, appending under the file's own header."""

    #: The step a resumed run continues from (HistoryCSVLogger.continue_from), until its first training
    #: row is saved; None otherwise.
    resumed_at: int | None = None

    @override
    def _check_log_dir_exists(self) -> None:
        """Keep metrics.csv: HistoryCSVLogger.continue_from decides what happens to it."""

    @override
    def save(self) -> None:
        if self.resumed_at is not None and any(not _is_test_row(row) for row in self.metrics):
            self._replace_rows_at(self.resumed_at, min(int(row["step"]) for row in self.metrics))
            self.resumed_at = None
        # Columns already in the file (an earlier run, or a spawned fit's rank 0) stay columns: the
        # base class rewrites the file under metrics_keys when a new column appears.
        if self.metrics and os.path.isfile(self.metrics_file_path):
            self.metrics_keys = sorted(set(self.metrics_keys) | set(_header(self.metrics_file_path)))
        super().save()

    def _replace_rows_at(self, step: int, first: int) -> None:
        """The resumed run's first training rows are about to be written, the earliest at step `first`.
        When that is the resumed step itself, the interrupted run's rows there were logged after its
        checkpoint (the next epoch's learning rate, its first batch's train/loss): they are logged again
        now, so the old ones go. A final test's rows stay (nothing logs them again); so do rows at the
        step when the resumed run logs from the next one (a checkpoint written at validation end is
        taken before the step counter moves on, and the epoch's own rows share its step)."""
        if first > step or not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) != step or _is_test_row(row)]
        if len(kept) < len(rows):
            _write_rows(self.metrics_file_path, list(reader.fieldnames or []), kept)

    @override
    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Atomically: the base class rewrites in place, so a kill there would lose the history."""
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        _write_rows(self.metrics_file_path, fieldnames, rows)


class HistoryCSVLogger(CSVLogger):
    """CSVLogger (same csv/metrics.csv path and columns) that appends on resume: call continue_from
    before fitting; until then, and without it, an existing metrics.csv is appended to."""

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def continue_from(self, step: int | None) -> None:
        """step None: a fresh run, so an old metrics.csv goes (as Lightning's logger does). Else the
        run resumes a checkpoint saved at logger step `step`: rows logged after it (the rest of an
        interrupted epoch, or a later trajectory abandoned by resuming an older checkpoint) go,
        because the resumed run logs those steps again; rows at `step` itself stay (the last
        finished epoch's and a final test's) unless the resumed run logs that step again
        (_KeepingWriter._replace_rows_at, when it writes its first rows)."""
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return
        if step is None:
            os.remove(path)
            return
        self.experiment.resumed_at = step
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
        kept = [row for row in rows if not row.get("step") or float(row["step"]) <= step]
        if len(kept) < len(rows):
            _write_rows(path, list(reader.fieldnames or []), kept)


def continue_history(loggers: list[Logger], resumed: dict[str, Any] | None) -> None:
    """Tell each HistoryCSVLogger whether this fit starts over (resumed None) or continues the
    checkpoint `resumed`, from the step its loggers had reached."""
    step = None
    if resumed is not None:
        epoch_loop = resumed.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        step = int(epoch_loop.get("_batches_that_stepped", resumed.get("global_step", 0)))
    for logger in loggers:
        if isinstance(logger, HistoryCSVLogger):
            logger.continue_from(step)


def _is_test_row(row: dict[str, Any]) -> bool:
    """A row of the end-of-run test (recipes.stages.scoring logs only `test/...` metrics, at the run's last
    step), as opposed to the training rows that a resumed run logs again."""
    names = [key for key, value in row.items() if key not in ("step", "epoch") and value not in ("", None)]
    return bool(names) and all(name.startswith("test/") for name in names)


def _header(path: str) -> list[str]:
    with open(path, newline="") as file:
        return next(csv.reader(file), [])


def _write_rows(path: str, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda file: file.write(text.getvalue().encode()))
