"""Bad input: one line naming the bad value and the fix, a non-zero exit, no traceback, nothing written.

A pre-flight refusal and a start-up refusal run in a real subprocess (the CLI contract as a shell sees
it; evaluate's is in tests/recipes/checkpointing/test_checkpoint_trust.py, a multirun's in
test_startup_contract.py); the other values run the same entry point in this process
(tests/helpers/runs.py: train_in_process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, run_module, train, train_in_process, train_ok_in_process


@pytest.fixture
def mlp_checkpoint(two_epoch_run: Path) -> Path:
    return two_epoch_run / json.loads((two_epoch_run / "results.json").read_text())["checkpoint"]


def _image_folder(root: Path, splits: dict[str, list[str]], images: bool = True) -> Path:
    from PIL import Image

    for split, classes in splits.items():
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            if images:
                for i in range(3):
                    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
    return root


CASES = {
    "unknown recipe": (["recipe=nope"], ["unknown recipe 'nope'", "baseline"]),
    "unknown model": (["model=vgg"], ["unknown model 'vgg'", "mlp"]),
    "unknown data": (["data=imagenet"], ["unknown data 'imagenet'", "digits"]),
    "zero batch size": (["data.batch_size=0"], ["data.batch_size=0", "positive"]),
    "negative batch size": (["data.batch_size=-3"], ["data.batch_size=-3"]),
    "nested data module's batch size": (
        ["data=digits_shift", "data.target.batch_size=0"],
        ["error: data.target.batch_size=0 must be a positive integer"],
    ),
    "batch size of wrong type": (["data.batch_size=abc"], ["data.batch_size='abc'", "int"]),
    "max_epochs of wrong type": (["trainer.max_epochs=many"], ["'many'", "trainer.max_epochs", "int"]),
    "negative learning rate": (["task.optimizer.lr=-0.1"], ["-0.1"]),
    "zero learning rate": (["task.optimizer.lr=0"], ["task.optimizer.lr=0", "positive"]),
    "bad precision": (["trainer.precision=17"], ["trainer.precision=17"]),
    "resume with no last checkpoint": (["ckpt_path=last"], ["ckpt_path=last", "hydra.run.dir"]),
}


# One refusal of the pre-flight (before Hydra) and one of the start-up checks (inside the run) in a subprocess.
IN_A_SUBPROCESS = {"unknown recipe", "zero batch size"}


@pytest.mark.parametrize("case", CASES)
def test_bad_override(case: str, run_dir: Path) -> None:
    overrides, expected = CASES[case]
    run = train if case in IN_A_SUBPROCESS else train_in_process
    assert_clean_failure(run(run_dir, *overrides), run_dir, *expected)


def test_missing_data_dir(run_dir: Path, tmp_path: Path) -> None:
    proc = train_in_process(run_dir, "data=mnist", f"data.root={tmp_path / 'nowhere'}")
    assert_clean_failure(proc, run_dir, "data.root=", "data.download=true")


def test_empty_data_dir(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = train_in_process(run_dir, "data=cifar10", f"data.root={tmp_path / 'empty'}")
    assert_clean_failure(proc, run_dir, "missing or empty")


def test_image_folder_without_images(run_dir: Path, tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs", {"": ["cat", "dog"]}, images=False)
    assert_clean_failure(train_in_process(run_dir, "data=imagefolder", f"data.root={root}"), run_dir, "no images")


def test_image_folder_with_a_class_missing_from_a_split(run_dir: Path, tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs", {"train": ["cat", "dog"], "val": ["cat", "dog"], "test": ["cat"]})
    assert_clean_failure(
        train_in_process(run_dir, "data=imagefolder", f"data.root={root}"), run_dir, "test/", "['dog']"
    )


def test_missing_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    proc = train_in_process(run_dir, f"ckpt_path={tmp_path / 'no.ckpt'}")
    assert_clean_failure(proc, run_dir, "no.ckpt does not exist")


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_corrupt_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_clean_failure(
        train_in_process(run_dir, f"ckpt_path={bad}"), run_dir, "bad.ckpt is not a readable checkpoint"
    )
    assert_clean_failure(run_module("recipes.evaluate", f"ckpt_path={bad}"), None, "not a readable checkpoint")


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_checkpoint_from_another_architecture(run_dir: Path, mlp_checkpoint: Path) -> None:
    proc = train_in_process(run_dir, f"ckpt_path={mlp_checkpoint}", "model=lenet5")
    assert_clean_failure(proc, run_dir, "model=mlp", "does not fit")
    proc = train_in_process(run_dir, f"ckpt_path={mlp_checkpoint}", "model.hidden=[64]")
    assert_clean_failure(proc, run_dir, "shape")


def test_evaluate_needs_a_checkpoint(tmp_path: Path) -> None:
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={tmp_path / 'x.ckpt'}")
    assert_clean_failure(proc, None, "does not exist")


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_existing_run_dir_is_kept_on_error(run_dir: Path, mlp_checkpoint: Path) -> None:
    """An error in a run dir that already holds results must not delete them."""
    train_ok_in_process(run_dir, "debug=fast_dev_run")
    proc = train_in_process(run_dir, "data.batch_size=0", "overwrite=true")  # past the finished-run refusal
    assert proc.returncode != 0 and (run_dir / "results.json").is_file()


def test_multirun_with_a_relaunching_strategy_fails_fast(tmp_path: Path) -> None:
    proc = run_module_in_process(
        "recipes.train", "--multirun", "seed=0,1", "trainer=ddp_sim", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert_clean_failure(proc, tmp_path / "sweep" / "0", "multirun", "ddp_spawn", "torchrun", "srun", "submitit")


def test_refused_run_leaves_no_empty_output_folders(tmp_path: Path) -> None:
    """A start-up refusal in the default run dir (outputs/<recipe>/<run id> under the working dir)
    removes the run dir and the folders it left empty: the working dir is as it was."""
    proc = run_module("recipes.train", "data.batch_size=0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.batch_size=0" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_adapt_source_of_another_architecture(run_dir: Path, mlp_checkpoint: Path) -> None:
    """recipe=adapt starts from the source's weights: a source net of another shape is one line."""
    proc = train_in_process(run_dir, "recipe=adapt", f"task.source_ckpt={mlp_checkpoint}", "model.hidden=[16]")
    assert_clean_failure(proc, run_dir, "task.source_ckpt", "another architecture", "model settings")
