"""task=darts and recipe=darts through the real entry point (Hydra compose + Lightning Trainer) on a tiny
supernet: the search derives, records and draws a genotype; a killed search resumes bit-exactly; the
two-stage recipe retrains the searched genotype as a plain classifier that evaluate rebuilds; bad
search spaces and genotypes are one-line errors at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modules.nas.genotype import Genotype
from tests.helpers.runs import assert_clean_failure, run_module_in_process, train_in_process, train_ok_in_process

FAST = ("callbacks.model_summary=null", "callbacks.lr_monitor=null", "logger=csv", "export=none")
TINY = ("model.channels=4", "model.cells=3", "model.nodes=2")
SEARCH = ("task=darts", "model=darts_search", *TINY, "trainer.max_epochs=2", "+trainer.limit_train_batches=4")


def test_the_search_derives_records_and_draws_a_genotype(run_dir: Path) -> None:
    results = train_ok_in_process(run_dir, *SEARCH, *FAST)
    darts = results["darts"]
    genotype = Genotype.parse(darts["genotype"], darts["operations"])
    assert genotype.nodes == 2 and darts["order"] == 1 and darts["max_skips"] == 2 and darts["epochs"] == 2
    assert sum(op == "skip" for node in genotype.normal for op, _ in node) <= 2
    assert darts["skips_uncapped"] - darts["skips_replaced"] <= 2
    weights = torch.tensor(darts["weights"]["normal"])
    assert weights.shape == (5, 7) and torch.allclose(weights.sum(1), torch.ones(5))
    assert (run_dir / "genotype.png").stat().st_size > 0 and (run_dir / "alphas.png").stat().st_size > 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(ckpt["optimizer_states"]) == 2  # the weights' SGD and alpha's Adam
    assert len(ckpt["darts_alpha_trajectory"]) == 2  # softmax(alpha) at each epoch end


def test_a_killed_search_resumes_bit_exactly(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    overrides = (*SEARCH, *FAST, "task.order=2")
    train_ok_in_process(straight, *overrides)
    # two optimizer steps per batch (alpha, then the weights): 8 steps = the first epoch's 4 batches
    train_ok_in_process(resumed, *overrides, "trainer.max_steps=8")
    train_ok_in_process(resumed, *overrides, "ckpt_path=last")
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for first, second in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for k, state in first["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(second["state"][k][name])), (k, name)
    assert (
        json.loads((straight / "results.json").read_text())["darts"]["genotype"]
        == json.loads((resumed / "results.json").read_text())["darts"]["genotype"]
    )


def test_recipe_darts_searches_then_retrains_the_genotype(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok_in_process(
        run_dir,
        "recipe=darts",
        *TINY[:2],
        "trainer.max_epochs=1",
        "prerequisites.search.trainer.max_epochs=1",
        "prerequisites.search.model.channels=4",
        "prerequisites.search.model.cells=3",
        "prerequisites.search.model.nodes=2",
        "+trainer.limit_train_batches=4",
        *FAST,
    )
    search = json.loads((run_dir / "search" / "results.json").read_text())
    ckpt = torch.load(run_dir / results["checkpoint"], weights_only=True)
    assert ckpt["recipe"]["config"]["model"]["genotype"] == search["darts"]["genotype"]
    assert (run_dir / "search" / "genotype.png").is_file()
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={run_dir / results['checkpoint']}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/acc"] == results["metrics"]["test/acc"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((*SEARCH, "model.operations=[skip,warp_9x9]"), "unknown DARTS operation 'warp_9x9'"),
        ((*SEARCH, "model.nodes=0"), "model.nodes=0 must be >= 1"),
        ((*SEARCH, "model.operations=[zero]"), "has only the zero operation"),
        ((*SEARCH, "task.order=3"), "task.order=3 must be 1"),
        (("recipe=darts_retrain", "model.genotype=normal:skip@0"), "model.genotype must read normal:OP@IN"),
        (("recipe=darts_retrain", "model.genotype=normal:skip@0+skip@4|reduce:skip@0+skip@1"), "reads input 4"),
        (("recipe=darts_retrain",), "model.genotype is not set"),
        (("task=darts", "model=mlp"), "task=darts searches a model=darts_search supernet"),
        (("recipe=darts", "prerequisites.search.model.nodes=0"), "model.nodes=0 must be >= 1"),  # before the search
    ],
)
def test_a_bad_search_or_genotype_is_refused_at_start_up(run_dir: Path, overrides: tuple[str, ...], expected: str):
    assert_clean_failure(train_in_process(run_dir, *overrides, *FAST), run_dir, expected)


@pytest.mark.slow  # two spawned ranks per case: runs in CI's slow pass (python -m pytest -m slow)
@pytest.mark.parametrize("order", [1, 2])
def test_ddp_ranks_search_the_same_architecture(tmp_path: Path, order: int) -> None:
    """Under DDP every rank ends with the same weights and alphas (order=2's hand-made alpha gradient is
    averaged over the ranks as DDP averages the others)."""
    from tests.helpers.runs import train_ok

    probe = (
        "+callbacks.probe._target_=tests.helpers.replica_probe.ReplicaProbe",
        f"+callbacks.probe.out_dir={tmp_path / 'probe'}",
        "+callbacks.probe.last_only=true",
    )
    results = train_ok(tmp_path / "run", *SEARCH, *FAST, f"task.order={order}", "trainer=ddp_sim", *probe)
    r0, r1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert torch.allclose(r0["params"], r1["params"], atol=1e-6)
    assert results["parallel"]["world_size"] == 2 and results["darts"]["order"] == order
