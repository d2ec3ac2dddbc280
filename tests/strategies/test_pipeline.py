"""strategy=pipeline: one pipelined step (2 stages, 4 micro-batches, a padded last micro-batch) gives
the single-process loss and gradients on the same batch, for both schedules; a pipelined run trains,
ships the whole net in its checkpoints, and recipes.evaluate reproduces its test accuracy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from modules.nets.mlp import MLP
from recipes.assembly.tasks import build_datamodule, build_module
from recipes.strategies import pipeline_stages as stages
from recipes.strategies.pipeline import PipelineStrategy
from tests.helpers.runs import run_module, train_in_process, train_ok

SMALL = ("model.hidden=[64]", "logger=csv", "callbacks.model_summary=null")
PIPELINE = ("trainer=ddp_sim", "strategy=pipeline", "strategy.microbatches=4")


def logged(run_dir: Path, name: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


@pytest.mark.parametrize("schedule", [pytest.param("gpipe", marks=pytest.mark.slow), "1f1b"])
def test_pipelined_step_equals_single_process(tmp_path: Path, schedule: str) -> None:
    # SGD with lr=1 and no decay: the weights after one step are w0 - grad, so the checkpoint shows the
    # gradients. A batch of 30 in 4 micro-batches of 8 also exercises the padding of a ragged batch.
    run = tmp_path / schedule
    train_ok(
        run,
        *PIPELINE,
        f"strategy.schedule={schedule}",
        "data.shuffle=false",
        "data.batch_size=30",
        "trainer.max_steps=1",
        "trainer.log_every_n_steps=1",
        "task.optimizer._target_=torch.optim.SGD",
        "task.optimizer.lr=1.0",
        "task.optimizer.weight_decay=0",
        "task.scheduler=null",
        *SMALL,
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # The reference: the run's own config rebuilt on one process (same seed, so the same initial net).
    cfg = OmegaConf.create(ckpt["recipe"]["config"])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    datamodule.setup("fit")
    x, y = next(iter(DataLoader(datamodule.training_dataset(), batch_size=30)))
    initial = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    loss = module.loss_fn(module.net(x), y)
    loss.backward()
    assert set(ckpt["state_dict"]) == set(module.state_dict())  # the whole net, `net.` keys
    for name, param in module.net.named_parameters():
        pipelined_grad = initial[name] - ckpt["state_dict"][f"net.{name}"]
        assert param.grad.abs().max() > 1e-3, name  # both stages' weights really received gradients
        assert torch.allclose(pipelined_grad, param.grad, atol=1e-5, rtol=0), name
    assert logged(run, "train/loss")[0] == pytest.approx(loss.item(), abs=1e-5)


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_pipeline_trains_and_ships_the_whole_net(run_dir: Path) -> None:
    results = train_ok(
        run_dir, *PIPELINE, "data.train_samples=640", "data.batch_size=32", "trainer.max_epochs=4", *SMALL
    )
    parallel = results["parallel"]
    assert parallel["strategy"] == "PipelineStrategy" and parallel["world_size"] == 2
    assert parallel["steps"] == 4 * 640 // 32  # every rank works on the same batches: no data sharding
    assert parallel["comm_bytes_per_step"] > 4 * 8 * 64 * 4  # at least rank 0's activations: 4 x 8 x 64 floats
    assert results["metrics"]["test/acc"] > 0.7  # chance is 0.1
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert sorted(last["state_dict"]) == ["net.1.bias", "net.1.weight", "net.3.bias", "net.3.weight"]
    assert len(logged(run_dir, "train/loss")) >= 1
    proc = run_module("recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["test/acc"] == pytest.approx(results["metrics"]["test/acc"], abs=1e-6)


def test_bad_schedule_is_one_error_line(run_dir: Path) -> None:
    proc = train_in_process(run_dir, *PIPELINE, "strategy.schedule=zigzag")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "strategy.schedule='zigzag'" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_values_and_split_points_are_checked() -> None:
    for kwargs, key in [
        ({"microbatches": 0}, "strategy.microbatches"),
        ({"schedule": "x"}, "strategy.schedule"),
        ({"split_points": [3, 2]}, "strategy.split_points"),
        ({"split_points": [0]}, "strategy.split_points"),
    ]:
        with pytest.raises(ValueError, match=key):
            PipelineStrategy(**kwargs)
    net = MLP((1, 8, 8), 10, hidden=[300, 100])  # Flatten, Linear, ReLU, Linear, ReLU, Linear
    assert stages.default_split_points(net, 2) == [3]  # 19.5K | 31.1K parameters, 3 | 3 blocks
    assert stages.stage_bounds(net, None, 3) == [(0, 2), (2, 4), (4, 6)]  # 19.5K | 30.1K | 1K
    with pytest.raises(ValueError, match="strategy.split_points"):
        stages.stage_bounds(net, [6], 2)  # a stage starting past the last block
