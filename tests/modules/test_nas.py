"""DARTS's parts as plain modules: the mixed operation, the top-2 rule and the skip cap, the genotype's
text, the derived net against its genotype, the unrolled gradient, and the search space's refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modules.nas.cells import DerivedCell, MixedOp
from modules.nas.genotype import Genotype, derive_cell, edge_count
from modules.nas.networks import DartsNet, SearchNetwork
from modules.nas.operations import DEFAULT_OPERATIONS, build_operation
from tests.helpers.build import GENOTYPE


def test_the_mixed_op_is_the_weighted_sum_of_its_operations() -> None:
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, DEFAULT_OPERATIONS).eval()
    x, weights = torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(len(DEFAULT_OPERATIONS)), 0)
    expected = sum(w * op(x) for w, op in zip(weights, mixed.ops, strict=True))
    torch.testing.assert_close(mixed(x, weights), expected)
    one_hot = torch.zeros(len(DEFAULT_OPERATIONS))
    one_hot[DEFAULT_OPERATIONS.index("skip")] = 1.0
    torch.testing.assert_close(mixed(x, one_hot), x)  # all weight on skip: the input itself


def test_alpha_moves_toward_the_operation_that_fits() -> None:
    """On a toy problem whose answer is the identity, softmax(alpha) comes to favour skip."""
    torch.manual_seed(0)
    ops = ("zero", "skip", "avg_pool_3x3", "max_pool_3x3")
    mixed, alpha = MixedOp(3, 1, ops), nn.Parameter(torch.zeros(len(ops)))
    optimizer = torch.optim.Adam([alpha], lr=0.05)
    for _ in range(100):
        x = torch.randn(8, 3, 6, 6)
        loss = (mixed(x, torch.softmax(alpha, 0)) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = torch.softmax(alpha, 0)
    assert weights.argmax() == 1 and weights[1] > 0.6, weights


def test_the_derived_cell_keeps_each_nodes_two_strongest_non_zero_edges() -> None:
    ops = ["zero", "skip", "sep_conv_3x3"]
    weights = torch.tensor(
        [  # node 0: edges from inputs 0, 1;  node 1: edges from 0, 1, node 0
            [0.9, 0.05, 0.05],  # zero dominates: its best non-zero op weighs only 0.05
            [0.2, 0.1, 0.7],
            [0.1, 0.6, 0.3],
            [0.2, 0.3, 0.5],
            [0.0, 0.1, 0.9],
        ]
    )
    cell, replaced = derive_cell(weights, ops, nodes=2)
    assert edge_count(2) == 5 and replaced == 0
    assert cell == ((("sep_conv_3x3", 1), ("skip", 0)), (("sep_conv_3x3", 2), ("skip", 0)))
    capped, replaced = derive_cell(weights, ops, nodes=2, max_skips=1)
    assert replaced == 1 and sum(op == "skip" for node in capped for op, _ in node) == 1
    assert capped[0][1] == ("sep_conv_3x3", 0) and capped[1][1] == ("skip", 0)  # the weaker skip (0.05) gave way


def test_the_genotype_text_round_trips_and_bad_text_is_refused() -> None:
    genotype = Genotype.parse(GENOTYPE)
    assert str(genotype) == GENOTYPE and genotype.nodes == 2
    for bad, message in [
        ("normal:skip@0", "must read normal:OP@IN"),
        ("normal:skip@0+skip@1|reduce:skip@0+x@@1", "is not OP@INPUT"),
        ("normal:skip@0+skip@3|reduce:skip@0+skip@1", "reads input 3"),
        ("normal:skip@0|reduce:skip@0+skip@1", "has 1 edges, not 2"),
        ("normal:zero@0+skip@1|reduce:skip@0+skip@1", "keeps a zero edge"),
    ]:
        with pytest.raises(ValueError, match=message):
            Genotype.parse(bad)
    with pytest.raises(ValueError, match="'sep_conv_3x3' in the normal cell is not in the search space"):
        Genotype.parse(GENOTYPE, operations=["zero", "skip", "max_pool_3x3", "avg_pool_3x3", "dil_conv_3x3"])


def test_the_derived_net_is_exactly_its_genotypes_net() -> None:
    net = DartsNet((1, 8, 8), 10, GENOTYPE, channels=4, cells=3)
    genotype = Genotype.parse(GENOTYPE)
    cells = [m for m in net.modules() if isinstance(m, DerivedCell)]
    assert [c.reduction for c in cells] == [False, True, True]  # reductions at 3 // 3 and 2 * 3 // 3
    for cell in cells:
        expected = [(op, source) for node in genotype.cell(cell.reduction) for op, source in node]
        assert cell.sources == [source for _, source in expected]
        for module, (op, source) in zip(cell.ops, expected, strict=True):
            stride = 2 if cell.reduction and source < 2 else 1
            reference = build_operation(op, module_channels(cell), stride, affine=True)
            assert [type(m) for m in module.modules()] == [type(m) for m in reference.modules()], op
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def module_channels(cell: DerivedCell) -> int:
    return cell.preprocess[1][1].out_channels


def test_the_unrolled_gradient_matches_autograd_through_the_step() -> None:
    """order=2's alpha gradient (finite differences, DARTS eq. 8) against autograd through the
    unrolled weight step itself, on a tiny supernet."""
    from modules.darts import DartsSearchModule

    torch.manual_seed(0)
    net = SearchNetwork((1, 6, 6), 3, channels=2, cells=1, nodes=1, operations=["skip", "conv_3x3", "avg_pool_3x3"])
    module = DartsSearchModule(net, torch.optim.SGD, torch.optim.Adam, order=2)
    x_w, y_w, x_a, y_a = (
        torch.randn(6, 1, 6, 6),
        torch.randint(3, (6,)),
        torch.randn(6, 1, 6, 6),
        torch.randint(3, (6,)),
    )
    xi = 0.1
    weight_opt = torch.optim.SGD(net.weight_parameters(), lr=xi)
    module.unrolled_arch_gradient(x_w, y_w, x_a, y_a, weight_opt)
    approx = [None if a.grad is None else a.grad.clone() for a in net.arch_parameters()]

    names = [n for n, _ in net.named_parameters() if not n.startswith("alpha_")]
    weights = net.weight_parameters()
    loss = nn.functional.cross_entropy
    grads = torch.autograd.grad(loss(net(x_w), y_w), weights, create_graph=True)
    unrolled = {n: w - xi * g for n, w, g in zip(names, weights, grads, strict=True)}
    exact = torch.autograd.grad(
        loss(functional_call(net, unrolled, (x_a,)), y_a), net.arch_parameters()[:1]
    )  # one cell: no reduction cell, alpha_reduce unused
    assert approx[1] is None or not approx[1].any()
    torch.testing.assert_close(approx[0], exact[0], rtol=0.05, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operations": ["skip", "warp_9x9"]}, "unknown DARTS operation 'warp_9x9'"),
        ({"operations": ["zero"]}, "has only the zero operation"),
        ({"nodes": 0}, "model.nodes=0 must be >= 1"),
        ({"operations": ["skip", "skip"]}, "names an operation twice"),
    ],
)
def test_a_bad_search_space_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchNetwork((1, 8, 8), 10, **kwargs)


def test_a_derived_net_without_a_genotype_is_refused() -> None:
    with pytest.raises(ValueError, match="model.genotype is not set"):
        DartsNet((1, 8, 8), 10, None)
