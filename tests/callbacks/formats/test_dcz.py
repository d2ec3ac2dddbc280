"""Huffman coding and the .dcz file: prefix-free codes that decode exactly, Han's relative positions
with filler zeros, each encoding chosen where it is smallest, a bit-exact round trip, a report whose
compressed_bytes is the file's size, and the CLI paths that write, decode and test it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from callbacks.formats import dcz, huffman
from callbacks.formats.tensor_encodings import encode_tensor, sparse_entries
from callbacks.surgery.dead_units import zero_dead_units
from callbacks.surgery.folding import fold_masks
from modules.nets.mlp import MLP
from tests.helpers.runs import assert_clean_failure, run_module, train_ok


@pytest.mark.parametrize("alphabet", [1, 2, 9, 256])
def test_huffman_codes_are_prefix_free_and_decode_exactly(alphabet: int) -> None:
    rng = np.random.default_rng(alphabet)
    symbols = rng.geometric(0.3, size=3000).clip(1, alphabet) - 1  # skewed, as cluster indices are
    lengths = huffman.code_lengths(symbols, alphabet)
    codes = list(huffman.canonical_codes(lengths).values())
    assert not any(a != b and b.startswith(a) for a in codes for b in codes)
    data = huffman.encode(symbols, lengths)
    assert len(data) == -(-huffman.coded_bits(symbols, lengths) // 8)
    assert np.array_equal(huffman.decode(data, lengths, len(symbols)), symbols)
    if alphabet > 2:  # shorter than fixed-width codes on a skewed stream
        assert huffman.coded_bits(symbols, lengths) < len(symbols) * np.ceil(np.log2(alphabet))


def test_relative_positions_bridge_long_gaps_with_filler_zeros() -> None:
    flat = np.zeros(40)
    flat[[2, 3, 20]] = 1.0
    gaps, which = sparse_entries(flat, pbits=3)  # gaps up to 8
    assert (gaps + 1).tolist() == [3, 1, 8, 8, 1]  # 20 - 3 = 17 = 8 (filler) + 8 (filler) + 1
    assert which.tolist() == [0, 1, -1, -1, 2]
    assert (np.cumsum(gaps + 1) - 1).tolist() == [2, 3, 11, 19, 20]


def _compressed_net() -> nn.Module:
    """A net holding every kind of layer a compressed run ships."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 30), nn.Linear(30, 10)
    )
    with torch.no_grad():
        shared = torch.randn(8)
        first = net[0].weight
        first.copy_(torch.where(torch.rand_like(first) > 0.95, shared[torch.randint(0, 8, first.shape)], 0.0))
        alpha = net[2].weight.abs().mean(1, keepdim=True)
        net[2].weight.copy_(torch.where(net[2].weight >= 0, alpha, -alpha))  # binary, XNOR scales
        third = net[4].weight
        third.copy_(torch.where(third > 0.01, 0.3, torch.where(third < -0.01, -0.2, 0.0)))  # ternary
    return net


def test_dcz_round_trip_is_bit_exact_and_sizes_add_up(tmp_path: Path) -> None:
    net = _compressed_net()
    kinds = {key: encode_tensor(t.detach())[0] for key, t in net.state_dict().items()}
    assert kinds["0.weight"] == "sparse" and kinds["2.weight"] == "sign" and kinds["5.weight"] == "raw"
    assert kinds["4.weight"] in ("ternary", "shared")  # 2 packed bits, or Huffman codes where shorter
    assert all(kinds[f"{i}.bias"] == "raw" for i in (0, 2, 4, 5))
    stages = dcz.write(net, tmp_path / "model.dcz")
    size = (tmp_path / "model.dcz").stat().st_size
    data, per_key, _ = dcz.encode_net(net)
    assert sum(per_key.values()) == size == stages["huffman"] == len(data)
    assert size * 8 < sum(t.numel() for t in net.state_dict().values()) * 32 / 3
    assert net[2].weight.numel() / 8 < per_key["2.weight"] < net[2].weight.numel() / 8 + 4 * 100 + 40  # 1 bit each
    assert per_key["4.weight"] <= net[4].weight.numel() / 4 + 40  # at most 2 bits each
    decoded = dcz.load_into(_fresh(), tmp_path / "model.dcz")
    for key, tensor in net.state_dict().items():
        assert torch.equal(decoded.state_dict()[key], tensor) and decoded.state_dict()[key].dtype == tensor.dtype
    (tmp_path / "bad.dcz").write_bytes(b"DCZ1\x05\x00garbage")
    with pytest.raises(dcz.DczError, match="not a readable .dcz"):
        dcz.load_into(_fresh(), tmp_path / "bad.dcz")
    with pytest.raises(dcz.DczError, match="do not fit this net"):
        dcz.load_into(nn.Sequential(nn.Linear(64, 10)), tmp_path / "model.dcz")


def _fresh() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 30), nn.Linear(30, 10)
    )


def test_dead_units_ship_no_bias_and_the_round_trip_stays_bit_exact(tmp_path: Path) -> None:
    """Units the next layer no longer reads: zeroing their incoming rows and biases leaves the logits
    bit for bit, the .dcz then stores only the live biases (smaller file), and decodes exactly."""
    torch.manual_seed(0)
    net = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[300, 100])
    with torch.no_grad():
        for layer, keep in ((net[1], 0.05), (net[3], 0.05), (net[5], 0.2)):
            layer.weight.mul_(torch.rand_like(layer.weight) < keep)  # Deep Compression's sparsity
    x = torch.randn(64, 1, 8, 8)
    logits, (before, sizes, _) = net(x), dcz.encode_net(net)
    count = zero_dead_units(net)
    assert count > 0 and torch.equal(net(x), logits)
    data, per_key, _ = dcz.encode_net(net)
    assert len(data) < len(before)
    for name in ("1", "3"):  # each dead unit's 4 bytes of bias gone, for a few bytes naming the weight that reads it
        dead = int((dict(net.named_modules())[str(int(name) + 2)].weight == 0).all(0).sum())
        assert per_key[f"{name}.bias"] <= sizes[f"{name}.bias"] - 4 * dead + 10
    assert sum(sizes[f"{n}.bias"] - per_key[f"{n}.bias"] for n in ("1", "3")) > 4 * count - 20
    (tmp_path / "model.dcz").write_bytes(data)
    decoded = dcz.load_into(MLP(input_shape=(1, 8, 8), num_classes=10, hidden=[300, 100]), tmp_path / "model.dcz")
    for key, tensor in net.state_dict().items():
        assert torch.equal(decoded.state_dict()[key], tensor), key
    assert torch.equal(decoded(x), logits)


TINY = (
    "recipe=deep_compression",
    "trainer.max_epochs=4",
    "compress.prune.start_epoch=0",
    "compress.prune.end_epoch=1",
    "compress.kmeans.start_epoch=2",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
    "logger=csv",
)


def test_deep_compression_ships_a_dcz_whose_size_the_report_states(run_dir: Path) -> None:
    results = train_ok(run_dir, *TINY, "export.repeats=2", "export.batch_size=32", timeout=900)  # seconds when quiet
    comp, export = results["compression"], results["export"]
    dcz_file = run_dir / export["dcz"]
    assert comp["compressed_bytes"] == dcz_file.stat().st_size == export["bytes"]["dcz"]
    assert comp["stages"]["huffman"]["bytes"] == comp["compressed_bytes"]
    assert (
        comp["dense_bytes"]
        > comp["stages"]["pruned"]["bytes"]
        > comp["stages"]["quantized"]["bytes"]
        >= comp["stages"]["huffman"]["bytes"]
    )
    assert export["parity_max_abs_diff"] <= 1e-4 and export["top1_agreement"] == 1.0  # the ONNX file too
    # the decoded weights are, bit for bit, those of the checkpoint the run tested
    shipped = fold_masks(torch.load(run_dir / results["checkpoint"], weights_only=True)["state_dict"])
    decoded = dcz.decode(dcz_file.read_bytes())
    assert set(decoded) == {k[len("net.") :] for k in shipped}
    for key, tensor in decoded.items():
        assert torch.equal(tensor, shipped[f"net.{key}"]), key


@pytest.mark.slow  # long: runs in CI's slow pass (python -m pytest -m slow)
def test_evaluate_the_dcz_reproduces_the_test_accuracy(run_dir: Path, tmp_path: Path) -> None:
    results = train_ok(run_dir, *TINY, "export=none", timeout=900)
    ckpt = run_dir / results["checkpoint"]
    proc = run_module("recipes.export", f"ckpt_path={ckpt}", "export=dcz", f"out_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (
        report["parity_max_abs_diff"] <= 1e-4 and report["bytes"]["dcz"] == results["compression"]["compressed_bytes"]
    )
    proc = run_module(
        "recipes.evaluate",
        f"ckpt_path={ckpt}",
        f"weights={tmp_path / 'out' / 'model.dcz'}",
        f"out={tmp_path / 'eval.json'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == results["metrics"]
    proc = run_module("recipes.evaluate", f"ckpt_path={tmp_path / 'out' / 'model.dcz'}")
    assert_clean_failure(proc, None, "is a .dcz file, which holds weights only", "weights=")
    (tmp_path / "junk.dcz").write_bytes(b"junk")
    proc = run_module("recipes.evaluate", f"ckpt_path={ckpt}", f"weights={tmp_path / 'junk.dcz'}")
    assert_clean_failure(proc, None, "is not a readable .dcz file")
