"""Block-circulant layers against the dense matrices they stand for: forward and gradients through FFT
equal the expanded matrix's, the nearest block-circulant matrix is the Frobenius projection, the eval-mode
spectrum cache follows the weights, and the sizes and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.nets.block_circulant import (
    BlockCirculantConv2d,
    BlockCirculantLinear,
    check_block,
    circulant_index,
    dft_matrices,
    nearest_vectors,
)

LINEAR_SHAPES = [(16, 16, 4), (10, 7, 4), (64, 32, 16), (5, 12, 3), (512, 512, 16)]
CONV_SHAPES = [(8, 8, 3, 4, 1, 1), (6, 10, 3, 4, 2, 1), (16, 8, 1, 8, 2, 0), (16, 16, 1, 4, 1, 0)]


def test_a_circulant_block_is_its_vector_rotated() -> None:
    c = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(c[circulant_index(3)], torch.tensor([[1.0, 3.0, 2.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0]]))


@pytest.mark.parametrize(("in_size", "out_size", "block"), LINEAR_SHAPES)
def test_linear_equals_its_dense_matrix(in_size: int, out_size: int, block: int) -> None:
    torch.manual_seed(0)
    layer = BlockCirculantLinear(in_size, out_size, block)
    x = torch.randn(2, 3, in_size)  # leading dims pass through, as nn.Linear's
    dense = layer.dense_weight()
    assert dense.shape == (out_size, in_size)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("in_ch", "out_ch", "kernel", "block", "stride", "padding"), CONV_SHAPES)
def test_conv_equals_its_dense_kernel(in_ch: int, out_ch: int, kernel: int, block: int, stride: int, padding: int):
    torch.manual_seed(0)
    layer = BlockCirculantConv2d(in_ch, out_ch, kernel, block, stride, padding)
    x = torch.randn(2, in_ch, 9, 9)
    reference = nn.functional.conv2d(x, layer.dense_weight(), layer.bias, stride=stride, padding=padding)
    torch.testing.assert_close(layer(x), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fft_gradients_equal_the_dense_matrix_gradients(kind: str) -> None:
    """Autograd through rfft/irfft gives the vectors the gradient the expanded dense matrix gives them."""
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = BlockCirculantLinear(10, 7, 4), torch.randn(5, 10)
        dense_forward = lambda: x @ layer.dense_weight().T + layer.bias  # noqa: E731
    else:
        layer, x = BlockCirculantConv2d(6, 10, 3, 4, 2, 1), torch.randn(2, 6, 7, 7)
        dense_forward = lambda: nn.functional.conv2d(x, layer.dense_weight(), layer.bias, stride=2, padding=1)  # noqa: E731
    target = torch.randn_like(dense_forward())
    fft = torch.autograd.grad(((layer(x) - target) ** 2).sum(), [layer.weight, layer.bias])
    dense = torch.autograd.grad(((dense_forward() - target) ** 2).sum(), [layer.weight, layer.bias])
    for a, b in zip(fft, dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("in_size", "out_size", "block"), LINEAR_SHAPES[:4])
def test_nearest_is_the_frobenius_projection(in_size: int, out_size: int, block: int) -> None:
    """The residual is orthogonal to every block-circulant matrix (its diagonal means are 0), projecting
    twice changes nothing, and no perturbed vectors come closer to the dense matrix."""
    torch.manual_seed(0)
    linear = nn.Linear(in_size, out_size)
    layer = BlockCirculantLinear.from_linear(linear, block)
    residual = linear.weight - layer.dense_weight()
    assert nearest_vectors(residual, block).abs().max() < 1e-6
    torch.testing.assert_close(nearest_vectors(layer.dense_weight(), block), layer.weight, atol=1e-6, rtol=0)
    distance = residual.norm()
    for _ in range(5):
        other = BlockCirculantLinear(in_size, out_size, block)
        with torch.no_grad():
            other.weight.copy_(layer.weight + 1e-3 * torch.randn_like(layer.weight))
        assert (linear.weight - other.dense_weight()).norm() > distance
    assert torch.equal(layer.bias, linear.bias)


def test_nearest_conv_is_the_projection_of_each_tap() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    layer = BlockCirculantConv2d.from_conv(conv, 4)
    residual = conv.weight - layer.dense_weight()
    assert nearest_vectors(residual, 4).abs().max() < 1e-6
    x = torch.randn(1, 6, 5, 5)
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x, layer.dense_weight(), conv.bias, padding=1))


def test_a_circulant_dense_layer_converts_exactly() -> None:
    """A Linear that is block-circulant already converts to the same function."""
    torch.manual_seed(0)
    source = BlockCirculantLinear(24, 16, 8)
    linear = nn.Linear(24, 16)
    with torch.no_grad():
        linear.weight.copy_(source.dense_weight())
        linear.bias.copy_(source.bias)
    x = torch.randn(4, 24)
    torch.testing.assert_close(BlockCirculantLinear.from_linear(linear, 8)(x), linear(x), atol=1e-5, rtol=0)


def test_eval_caches_the_spectrum_until_the_weights_change() -> None:
    layer = BlockCirculantLinear(16, 16, 4).eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        first = layer(x)
        cached = layer._spectrum
        assert cached is not None and torch.equal(layer(x), first) and layer._spectrum is cached
        layer.weight.add_(0.5)  # an optimizer step or a load changes the weights in place
        changed = layer(x)
    assert layer._spectrum is not cached
    torch.testing.assert_close(changed, x @ layer.dense_weight().T + layer.bias, atol=1e-5, rtol=0)
    layer.train()
    assert layer._spectrum is None
    layer(x).sum().backward()  # training computes the spectrum with its graph
    assert layer.weight.grad is not None and layer._spectrum is None


def test_parameters_shrink_by_the_block() -> None:
    layer = BlockCirculantLinear(512, 512, 16)
    assert layer.weight.numel() == 512 * 512 // 16
    assert BlockCirculantConv2d(64, 64, 3, 16).weight.numel() == 64 * 64 * 9 // 16


@pytest.mark.parametrize("block", [1, 0, 600])
def test_a_block_that_does_not_fit_is_refused(block: int) -> None:
    with pytest.raises(
        ValueError, match=rf"^block={block} does not fit a 512 -> 256 layer: use a block in \[2, 512\]$"
    ):
        BlockCirculantLinear(512, 256, block)
    with pytest.raises(ValueError, match=r"^model.circulant_block=9 does not fit a 3 -> 8 layer"):
        check_block(9, 3, 8, "model.circulant_block")


def test_a_grouped_conv_has_no_circulant_form() -> None:
    with pytest.raises(ValueError, match="not a square, ungrouped, undilated convolution"):
        BlockCirculantConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=2), 4)


@pytest.mark.parametrize("block", [7, 8, 64])
def test_the_dft_matrices_are_rfft_and_irfft(block: int) -> None:
    x = torch.randn(5, block, dtype=torch.float64)
    forward, inverse = (m.double() for m in dft_matrices(block))
    parts = (x @ forward).unflatten(-1, (2, -1)).transpose(-1, -2)  # [5, k, (re, im)]
    torch.testing.assert_close(parts, torch.view_as_real(torch.fft.rfft(x, dim=-1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(parts.transpose(-1, -2).flatten(-2) @ inverse, x, atol=1e-6, rtol=0)


def _exported_pair() -> list[tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        (nn.Sequential(BlockCirculantLinear(100, 72, 16)).eval(), torch.randn(3, 100)),
        (nn.Sequential(BlockCirculantConv2d(12, 20, 3, 8, 2, 1)).eval(), torch.randn(2, 12, 9, 9)),
    ]


def test_the_exported_program_multiplies_by_the_dft_matrices() -> None:
    """torch.export traces the matmul form (no FFT op in the graph), equal to the eager FFT form."""
    for net, x in _exported_pair():
        program = torch.export.export(net, (x,))
        targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
        assert not any("fft" in target for target in targets), targets
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), net(x), atol=1e-5, rtol=0)


def test_the_onnx_file_runs_in_onnxruntime_without_a_dft_op(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from callbacks.formats.onnx_files import torch_onnx_export

    for k, (net, x) in enumerate(_exported_pair()):
        path = tmp_path / f"net{k}.onnx"
        torch_onnx_export(net, (x,), path, opset=18)
        assert "DFT" not in {node.op_type for node in onnx.load(str(path)).graph.node}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert abs(y - net(x).numpy()).max() <= 1e-4
