"""Compression steps on sequence nets: pruning of LSTM matrices (the masked weights are the ones
nn.LSTM computes with; sparsity, resume and evaluate of a mid-pruning checkpoint), k-means weight
sharing of LSTM matrices (the shared values are the ones it computes with, centroids trained by the
sum of their members' gradients; resume, evaluate, .dcz and ONNX), SVD of a transformer's Linears and
of an LSTM's matrices (the low-rank LSTM is nn.LSTM with the rank-r matrices; resume, evaluate, ONNX),
dynamic int8 export of an LSTM LM."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks.formats import dcz
from callbacks.lowrank import LowRankFactorization
from callbacks.parametrized import latent_weights
from callbacks.prune import MagnitudePruning, prunable_names, weight_sparsity
from callbacks.surgery.folding import fold_masks, remove_masks, snapshot
from callbacks.surgery.structure import edits, replay
from callbacks.surgery.weights import weight_targets
from callbacks.weight_sharing import WeightSharing
from modules.nets.lowrank_lstm import LowRankLSTM
from modules.nets.lstm import LSTMOutputs, SequenceLSTM
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import train_in_process, train_ok_in_process

TINY = (
    "recipe=lm",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_model_summary=false",
    "model.hidden=64",
)
TRANSFORMER = (*TINY[:-1], "model=transformer", "model.width=32")
PRUNE = (
    "compress=[prune]",
    "compress.prune.start_epoch=0",
    "compress.prune.end_epoch=1",
    "compress.prune.sparsity=0.8",
    "compress.prune.every_n_steps=3",
    "trainer.max_epochs=2",
)


@pytest.mark.parametrize("options", [{}, {"proj_size": 16}, {"share_gates": True}])
def test_pruned_lstm_computes_with_the_masked_matrices(options: dict) -> None:
    """nn.LSTM runs from a cached list of its weights: after pruning, its output is the output of a
    plain LSTM holding the masked weights, not of the dense one."""
    torch.manual_seed(0)
    net = SequenceLSTM((12,), 20, embed=8, hidden=32, **options).eval()
    x = torch.randint(0, 20, (3, 12))
    dense = net(x)
    MagnitudePruning.ensure_masks(net)
    names = prunable_names(net)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= set(names) or "lstm.layers.0.weight_hh" in names
    MagnitudePruning(sparsity=0.7).prune_to(net, 1.0)
    assert weight_sparsity(net) == pytest.approx(0.7, abs=1e-3)
    pruned = net(x)
    plain = SequenceLSTM((12,), 20, embed=8, hidden=32, **options).eval()
    plain.load_state_dict(fold_masks(net.state_dict()))  # orig * mask as plain weights
    assert not torch.allclose(pruned, dense)
    assert torch.allclose(pruned, plain(x), atol=1e-6)
    remove_masks(net)  # made permanent (as at the end of a fit): still the same outputs
    assert torch.allclose(net(x), pruned, atol=1e-6)


def test_prune_lstm_lm_reaches_sparsity_resumes_and_evaluates(tmp_path: Path) -> None:
    """The LSTM's matrices are pruned with the head; a mid-pruning checkpoint evaluates (masks folded)
    and resumes to the same weights as a straight run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = train_ok_in_process(straight, *TINY, *PRUNE)
    weights = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    folded = fold_masks(weights)  # the checkpoint holds the masks; the net after fit, their product
    for key in ("net.lstm.weight_ih_l0", "net.lstm.weight_hh_l0", "net.head.weight"):
        assert float((folded[key] == 0).float().mean()) > 0.5, key
    matrices = [v for k, v in folded.items() if k.endswith(("weight_ih_l0", "weight_hh_l0", "head.weight"))]
    zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.numel() for w in matrices)
    assert zeros == pytest.approx(0.8, abs=2e-3)
    assert a["compression"]["nonzero_params"] < 0.35 * a["compression"]["params"]
    train_ok_in_process(resumed, *TINY, *PRUNE, "trainer.max_steps=10")  # stops after epoch 0, masks mid-ramp
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.lstm.weight_hh_l0_mask" in mid
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/bpc"] > 0
    train_ok_in_process(resumed, *TINY, *PRUNE, "ckpt_path=last")
    again = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(again) == set(weights)
    for key in weights:
        assert torch.equal(weights[key], again[key]), key


@pytest.mark.parametrize("proj_size", [0, 8])
@pytest.mark.parametrize("layers", [1, 2])
def test_low_rank_lstm_at_full_rank_is_nn_lstm(proj_size: int, layers: int) -> None:
    """Every matrix factored at its full rank: the same outputs as nn.LSTM (LSTM and LSTMP, stacked)."""
    torch.manual_seed(0)
    lstm = LSTMOutputs(10, 16, layers, batch_first=True, proj_size=proj_size).eval()
    full = {name: min(w.shape) for name, w in lstm.named_parameters() if name.startswith(("weight_ih", "weight_hh"))}
    low = LowRankLSTM.from_lstm(lstm, full).eval()
    assert "weight_hh_l0_a" in dict(low.named_parameters()) and "weight_hh_l0" not in dict(low.named_parameters())
    x = torch.randn(3, 7, 10)
    assert torch.allclose(low(x), lstm(x), atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"proj_size": 16}])
def test_svd_of_an_lstm_computes_with_the_rank_r_matrices(options: dict) -> None:
    """svd at rank r: the LSTM block is a LowRankLSTM with r-wide factors, whose outputs are those of
    nn.LSTM holding the rank-r truncated SVD of each input / recurrent matrix; the edit replays."""
    torch.manual_seed(0)
    net = SequenceLSTM((12,), 20, embed=16, hidden=32, layers=2, **options).eval()
    step = LowRankFactorization(rank=4, epoch=1)
    step.check(net, max_epochs=2)
    truncated = SequenceLSTM((12,), 20, embed=16, hidden=32, layers=2, **options).eval()
    state = net.state_dict()
    for key, weight in list(state.items()):
        if key.startswith(("lstm.weight_ih", "lstm.weight_hh")):
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            state[key] = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    truncated.load_state_dict(state)
    dense_params = sum(p.numel() for p in net.parameters())
    ranks = step.factor(net)
    assert ranks["lstm"] == {"weight_ih_l0": 4, "weight_hh_l0": 4, "weight_ih_l1": 4, "weight_hh_l1": 4}
    assert isinstance(net.lstm, LowRankLSTM) and tuple(net.lstm.weight_hh_l1_a.shape) == (128, 4)
    assert sum(p.numel() for p in net.parameters()) < 0.5 * dense_params
    assert step.results(net, 0) == ({"svd_left_dense": ["lstm.weight_hr_l0", "lstm.weight_hr_l1"]} if options else {})
    x = torch.randint(0, 20, (3, 12))
    assert torch.allclose(net(x), truncated(x), atol=1e-5)
    rebuilt = replay(SequenceLSTM((12,), 20, embed=16, hidden=32, layers=2, **options), edits(net), {})
    rebuilt.load_state_dict(net.state_dict())  # strict: the same tensors under the same names
    assert torch.equal(rebuilt.eval()(x), net(x))
    with pytest.raises(ValueError, match=r"rank=15 is too large for layer net.lstm.weight_ih_l0 \(128x16"):
        LowRankFactorization(rank=15, epoch=1).check(SequenceLSTM((12,), 20, embed=16, hidden=32), max_epochs=2)
    bad = [{"kind": "factor", "step": "svd", "ranks": {"lstm": {"weight_hh_l0": 99}}}]
    with pytest.raises(ValueError, match=r"rank 99, outside 1..\d+"):
        replay(SequenceLSTM((12,), 20, embed=16, hidden=32, **options), bad, {})


@pytest.mark.slow
def test_svd_factors_the_transformer_and_names_what_an_lstm_keeps_dense(tmp_path: Path) -> None:
    """The transformer's attention and MLP Linears are factored (ONNX parity holds); the gate-shared
    LSTM has only its head to factor: refused without include_head, and the report names its dense
    matrices."""
    svd = ("compress=[svd]", "compress.svd.epoch=1", "trainer.max_epochs=2")
    results = train_ok_in_process(tmp_path / "t", *TRANSFORMER, *svd, "export=onnx")
    assert results["compression"]["ratio"] > 1.5
    assert results["export"]["parity_max_abs_diff"] < 1e-4
    weights = torch.load(tmp_path / "t" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(".attn.qkv." in k and k.endswith(".1.weight") for k in weights), sorted(weights)[:20]
    shared = (*TINY, *svd, "model.share_gates=true")
    proc = train_in_process(tmp_path / "l", *shared)
    assert proc.returncode == 2 and "lstm.layers.0.weight_hh" in proc.stderr and "include_head=true" in proc.stderr
    results = train_ok_in_process(tmp_path / "h", *shared, "compress.svd.include_head=true")
    assert results["compression"]["svd_left_dense"] == ["lstm.layers.0.weight_hh", "lstm.layers.0.weight_ih"]


@pytest.mark.slow
def test_svd_of_an_lstmp_lm_resumes_evaluates_and_exports(tmp_path: Path) -> None:
    """recipe=lm with svd on an LSTMP: fewer weights, ONNX parity (the loop unrolled); a checkpoint
    taken after the factoring epoch evaluates (the low-rank LSTM rebuilt) and resumes with
    ckpt_path=last to the weights of the straight run."""
    svd = (*TINY, "model.proj_size=16", "compress=[svd]", "compress.svd.epoch=1", "trainer.max_epochs=3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = train_ok_in_process(straight, *svd, "export=onnx")
    comp = results["compression"]
    assert comp["params"] < 0.7 * comp["dense_params"] and comp["svd_left_dense"] == ["lstm.weight_hr_l0"]
    assert comp["bpc_after"] == results["metrics"]["test/bpc"] > 0
    assert results["export"]["parity_max_abs_diff"] < 1e-4 and results["export"]["top1_agreement"] == 1.0
    train_ok_in_process(resumed, *svd, "trainer.max_steps=20")  # stops after epoch 1, factored at its start
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["recipe"]["structure"][0]["ranks"]["lstm"].keys() == {"weight_ih_l0", "weight_hh_l0"}
    assert "net.lstm.weight_hh_l0_a" in mid["state_dict"]
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/bpc"] > 0
    train_ok_in_process(resumed, *svd, "ckpt_path=last")
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key


@pytest.mark.slow
def test_dynamic_int8_export_of_an_lstm_quantizes_the_lstm(tmp_path: Path) -> None:
    """onnxruntime's dynamic quantization runs the LSTM node as DynamicQuantizeLSTM: a file of about a
    quarter of the fp32 ONNX's bytes that keeps the next-symbol prediction at nearly every step."""
    results = train_ok_in_process(tmp_path, *TINY, "trainer.max_epochs=1", "model.hidden=128", "export=dynamic")
    export = results["export"]
    assert export["int8"]["kernels"].get("DynamicQuantizeLSTM") == 1
    assert export["bytes"]["onnx_dynamic"] <= 0.3 * export["bytes"]["onnx"]
    assert export["int8"]["top1_agreement"] >= 0.95


RECURRENT = {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}


@pytest.mark.parametrize("options", [{}, {"proj_size": 16}, {"share_gates": True}])
def test_shared_lstm_computes_with_the_centroids_and_trains_them(options: dict) -> None:
    """After clustering, every LSTM matrix holds at most 2^bits values, the net's output is that of a
    plain copy loaded with them, and each centroid's gradient is the sum of its members' gradients."""
    torch.manual_seed(0)
    net = SequenceLSTM((12,), 20, embed=8, hidden=32, **options).eval()
    x = torch.randint(0, 20, (3, 12))
    dense = net(x)
    sharing, module = WeightSharing(bits=2), SimpleNamespace(shipped_net=net)
    sharing.setup(None, module, "fit")  # type: ignore[arg-type]
    sharing.on_train_epoch_start(SimpleNamespace(current_epoch=0), module)  # type: ignore[arg-type]
    shared = {label: getattr(m, tensor) for label, m, tensor in weight_targets(net)}
    assert len(shared) == 3 + bool(options.get("proj_size")) and len(latent_weights(net, "kmeans")) == len(shared)
    assert all(len(w.unique()) <= 4 for w in shared.values()), {k: len(w.unique()) for k, w in shared.items()}
    out = net(x)
    plain = SequenceLSTM((12,), 20, embed=8, hidden=32, **options).eval()
    plain.load_state_dict(snapshot(net).state_dict())  # the shared values as plain weights
    assert not torch.allclose(out, dense, atol=1e-3)
    assert torch.equal(out, plain(x))
    out.square().sum().backward()
    plain(x).square().sum().backward()
    plain_grads = {label: m.get_parameter(t).grad for label, m, t in weight_targets(plain)}
    for (m, name, param), label in zip(latent_weights(net, "kmeans"), shared, strict=True):
        assert m.parametrizations[name].original.grad is None  # the latent weight is not trained
        members = plain_grads[label][~param.zero]
        expected = torch.zeros(4).index_add_(0, param.index[~param.zero].long(), members)
        assert torch.allclose(param.centroids.grad, expected, atol=1e-5), label


KMEANS = ("compress=[kmeans]", "compress.kmeans.start_epoch=0", "trainer.max_epochs=2")
QUICK_EXPORT = ("export.repeats=1", "export.batch_size=8")  # parity checks only, no latency figures


def test_kmeans_lstm_lm_ships_shared_matrices_in_the_dcz(tmp_path: Path) -> None:
    """The LSTM's matrices ship as 2^bits shared values (nothing left unshared), counted as such by the
    report and the .dcz file (export checks it bit for bit, and the ONNX file's parity)."""
    results = train_ok_in_process(tmp_path, *TINY, *KMEANS, "export=dcz", *QUICK_EXPORT)
    assert "kmeans_left_unshared" not in results["compression"]
    weights = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    folded = fold_masks(weights)
    for key in (*RECURRENT, "head.weight"):
        assert len(folded[f"net.{key}"].unique()) <= 16, key
    assert results["compression"]["stages"]["huffman"]["bytes"] == results["export"]["bytes"]["dcz"]
    lstm = sum(folded[f"net.{key}"].numel() for key in RECURRENT)
    assert results["export"]["bytes"]["dcz"] < results["compression"]["dense_bytes"] - 3.5 * lstm  # 4 bits, not 32
    assert results["export"]["parity_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_kmeans_lstm_lm_resumes_with_sharing_on_and_evaluates(tmp_path: Path) -> None:
    """A checkpoint taken with sharing on resumes to the same weights as a straight run; the final
    checkpoint evaluates to the run's own test figure."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    results = train_ok_in_process(straight, *TINY, *KMEANS)
    weights = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    train_ok_in_process(resumed, *TINY, *KMEANS, "trainer.max_steps=10")  # stops after epoch 0, sharing on
    mid = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.lstm.parametrizations.weight_hh_l0.0.centroids" in mid
    train_ok_in_process(resumed, *TINY, *KMEANS, "ckpt_path=last")
    again = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(again) == set(weights)
    for key in weights:
        assert torch.equal(weights[key], again[key]), key
    out = tmp_path / "eval.json"
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["test/bpc"] == pytest.approx(results["metrics"]["test/bpc"])


@pytest.mark.slow
def test_deep_compression_of_an_lstmp_lm_prunes_then_shares_and_exports(tmp_path: Path) -> None:
    """Prune then share an LSTMP's input, recurrent and projection matrices: the zeros stay zero, every
    matrix holds at most 2^bits nonzero values, the .dcz records decode bit for bit, ONNX parity holds."""
    plan = ("compress=[prune,kmeans]", *PRUNE[1:], "compress.kmeans.start_epoch=2", "trainer.max_epochs=3")
    results = train_ok_in_process(tmp_path, *TINY, *plan, "model.proj_size=16", "export=onnx", *QUICK_EXPORT)
    assert "kmeans_left_unshared" not in results["compression"] and results["export"]["parity_max_abs_diff"] < 1e-4
    weights = fold_masks(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    for key in (*RECURRENT, "lstm.weight_hr_l0", "head.weight"):
        weight = weights[f"net.{key}"]
        assert float((weight == 0).float().mean()) > 0.3 and len(weight[weight != 0].unique()) <= 16, key
    net = SequenceLSTM((128,), 104, hidden=64, proj_size=16)
    net.load_state_dict({k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")})
    data, _, stages = dcz.encode_net(net)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in dcz.decode(data).items())
    assert stages["huffman"] == results["compression"]["stages"]["huffman"]["bytes"]
