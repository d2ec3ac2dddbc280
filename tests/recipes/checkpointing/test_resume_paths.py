"""A checkpoint passed to resume is data: the paths its ModelCheckpoint states name (best, k-th best,
last, the top-k table) are acted on by Lightning, which removes the previous file by that path and
takes a `local://` path as remote, skipping its own "inside the checkpoint dir" check. A genuine
last.ckpt whose states name a folder outside the run's checkpoints/ must resume without deleting it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from recipes.checkpointing.files import AtomicCheckpointIO
from recipes.checkpointing.resume_paths import foreign_paths, is_checkpoint_in
from tests.helpers.runs import copy_run, train_ok_in_process


def victim_folder(root: Path) -> Path:
    folder = root / "victim"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "precious.txt").write_text("keep me\n")
    return folder


def craft(last: Path, monitored: bool, **entries: Any) -> None:
    """Rewrite, in `last`, the state of the monitored (best) or the unmonitored (last) ModelCheckpoint;
    its dirpath stays this run's, so Lightning restores every entry."""
    ckpt = torch.load(last, weights_only=True)
    for state in ckpt["callbacks"].values():
        if "best_model_path" in state and bool(state.get("monitor")) == monitored:
            state.update(entries)
    torch.save(ckpt, last)
    torch.load(last, weights_only=True)  # the premise: it passes the pickle guard


def attacks(run: Path, victim: Path) -> dict[str, tuple[bool, dict[str, Any]]]:
    inside = run / "checkpoints"
    escape = f"{inside}/../../{victim.name}"  # a path that starts inside checkpoints/ and leaves it
    return {
        # the last-checkpoint callback removes its previous "best" (= last) file on its next save
        "scheme_on_last": (False, {"best_model_path": f"local://{victim}"}),
        # the monitored callback removes its k-th best when a better one arrives (score 0: any is better)
        "dotdot_kth_best": (
            True,
            {
                "best_model_path": escape,
                "kth_best_model_path": escape,
                "best_k_models": {escape: torch.tensor(0.0)},
                "best_model_score": torch.tensor(0.0),
                "kth_value": torch.tensor(0.0),
            },
        ),
        "file_scheme_last_path": (False, {"best_model_path": f"file://{victim}", "last_model_path": str(victim)}),
    }


@pytest.mark.parametrize("attack", ["scheme_on_last", "dotdot_kth_best", "file_scheme_last_path"])
def test_a_resumed_checkpoint_cannot_delete_a_folder(two_epoch_run: Path, tmp_path: Path, attack: str) -> None:
    run = copy_run(two_epoch_run, tmp_path)
    victim = victim_folder(tmp_path)
    monitored, entries = attacks(run, victim)[attack]
    last = run / "checkpoints" / "last.ckpt"
    craft(last, monitored, dirpath=os.path.realpath(run / "checkpoints"), **entries)

    results = train_ok_in_process(run, "trainer.max_epochs=4", "ckpt_path=last")

    assert (victim / "sub" / "precious.txt").read_text() == "keep me\n"
    log = (run / "train.log").read_text()
    assert "which it is not: ignored" in log, log[-2000:]
    shipped = run / results["checkpoint"]  # chosen afresh, inside the run's own checkpoints/
    assert shipped.parent == run / "checkpoints" and shipped.is_file()


def test_only_plain_files_directly_in_the_folder_pass(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "a.ckpt").write_bytes(b"x")
    (folder / "sub").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link.ckpt").symlink_to(outside / "f.ckpt")
    (folder / "dirlink").symlink_to(outside)
    assert is_checkpoint_in(str(folder / "a.ckpt"), folder)
    assert is_checkpoint_in(str(folder / "not-yet.ckpt"), folder)
    for bad in [
        f"local://{folder / 'a.ckpt'}",
        f"file:{folder / 'a.ckpt'}",
        str(folder / "sub"),
        str(folder / ".." / "outside"),
        str(folder / "link.ckpt"),
        str(folder / "dirlink"),
        str(outside),
        "",
        123,
    ]:
        assert not is_checkpoint_in(bad, folder), bad


def test_foreign_entries_are_dropped_and_the_best_score_with_its_path(tmp_path: Path) -> None:
    good, bad = str(tmp_path / "epoch001.ckpt"), "local:///home"
    state = {
        "best_model_path": bad,
        "best_model_score": torch.tensor(0.9),
        "kth_best_model_path": good,
        "last_model_path": "/etc",
        "best_k_models": {good: torch.tensor(0.5), bad: torch.tensor(0.9)},
    }
    assert foreign_paths(state, tmp_path) == [bad, "/etc", bad]
    assert state["best_model_path"] == "" and state["best_model_score"] is None
    assert state["kth_best_model_path"] == good and state["last_model_path"] == ""
    assert list(state["best_k_models"]) == [good]


@pytest.mark.parametrize("scheme", ["", "local://", "file://"])
def test_removing_a_checkpoint_never_removes_a_folder(tmp_path: Path, scheme: str) -> None:
    victim = victim_folder(tmp_path)
    io = AtomicCheckpointIO()
    io.remove_checkpoint(f"{scheme}{victim}")
    assert (victim / "sub" / "precious.txt").is_file()
    file = tmp_path / "old.ckpt"
    file.write_bytes(b"x")
    io.remove_checkpoint(f"{scheme}{file}")
    assert not file.exists()
