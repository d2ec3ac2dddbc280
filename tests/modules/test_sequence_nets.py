"""The sequence nets (model=lstm, model=transformer): logits per step for symbols and from the last step
for feature vectors, causal, the recurrent layers' arithmetic and sizes, their refusals, and that they
learn and export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.classifier import backbone, head
from modules.nets import head_block
from modules.nets import lstm as lstm_module
from modules.nets.lstm import SequenceLSTM, compiles_stepwise, exportable
from modules.nets.projected_lstm import ProjectedLSTM, stepwise_lstmp
from modules.nets.shared_gate_lstm import SharedGateLSTM
from modules.nets.transformer import CausalTransformer

VOCAB, SEQ = 11, 16
SMALL = {  # tiny nets, one per kind of recurrent layer, and the transformer
    "lstm": (SequenceLSTM, {"embed": 8, "hidden": 16, "layers": 2}),
    "lstmp": (SequenceLSTM, {"embed": 8, "hidden": 16, "layers": 2, "proj_size": 8}),
    "shared": (SequenceLSTM, {"embed": 8, "hidden": 16, "layers": 2, "share_gates": True}),
    "transformer": (CausalTransformer, {"width": 16, "layers": 2, "heads": 4}),
}


def small(name: str, input_shape: tuple[int, ...] = (SEQ,), num_classes: int = VOCAB) -> nn.Module:
    cls, knobs = SMALL[name]
    return cls(input_shape, num_classes, **knobs).eval()


def lstm_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_symbols_give_next_symbol_logits_at_every_step(name: str) -> None:
    net = small(name)
    assert net.input_shape == (SEQ,) and net.num_classes == VOCAB
    for length in (SEQ, 5, 1):  # prompts shorter than the context too
        assert net(torch.randint(0, VOCAB, (3, length))).shape == (3, length, VOCAB)


@pytest.mark.parametrize("name", SMALL)
def test_feature_sequences_give_class_logits_with_the_head_block_last(name: str) -> None:
    net = small(name, input_shape=(8, 8), num_classes=10)
    x = torch.randn(4, 8, 8)
    logits = net(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert head_block(net) == "head" and head(net) is net.head
    assert torch.equal(net.head(backbone(net)(x)), logits)  # the classifier's fine-tuning split works


@pytest.mark.parametrize("name", SMALL)
def test_a_step_sees_only_earlier_symbols(name: str) -> None:
    net = small(name)
    x = torch.randint(0, VOCAB, (2, SEQ))
    t = 6
    changed = x.clone()
    changed[:, t + 1 :] = (x[:, t + 1 :] + 1) % VOCAB
    before, after = net(x), net(changed)
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_lstmp_is_nn_lstm_with_projection_and_smaller() -> None:
    """LSTMP (Sak et al. 2014): the recurrent matrices act on the P-wide projection, plus P x H to project.
    One layer on 64-wide inputs, H=256: the plain LSTM has 329,728 weights, P=64 149,504 (0.453x);
    P=128 at H=512 has 462,848 (1.40x the plain H=256, with twice its cells)."""
    plain = SequenceLSTM((SEQ,), VOCAB, embed=64, hidden=256)
    projected = SequenceLSTM((SEQ,), VOCAB, embed=64, hidden=256, proj_size=64)
    wide = SequenceLSTM((SEQ,), VOCAB, embed=64, hidden=512, proj_size=128)
    assert type(projected.lstm).__mro__[1:].count(nn.LSTM) == 1 and projected.lstm.proj_size == 64
    assert projected.head.in_features == 64
    assert lstm_params(plain.lstm) == 4 * 256 * (64 + 256) + 8 * 256 == 329_728
    assert lstm_params(projected.lstm) == 4 * 256 * (64 + 64) + 8 * 256 + 64 * 256 == 149_504
    assert lstm_params(wide.lstm) == 4 * 512 * (64 + 128) + 8 * 512 + 128 * 512 == 462_848
    assert lstm_params(projected.lstm) / lstm_params(plain.lstm) == pytest.approx(0.4534, abs=1e-4)


def test_shared_gate_lstm_has_a_quarter_of_the_weights() -> None:
    shared = SequenceLSTM((SEQ,), VOCAB, embed=64, hidden=256, layers=2, share_gates=True)
    reference = nn.LSTM(64, 256, 2)
    assert isinstance(shared.lstm, SharedGateLSTM)
    assert lstm_params(shared.lstm) == 256 * (64 + 256) + 8 * 256 + 256 * (256 + 256) + 8 * 256
    assert lstm_params(shared.lstm) <= 0.35 * lstm_params(reference)  # 0.2547x here


def test_shared_gate_lstm_is_the_gate_shared_recurrence() -> None:
    torch.manual_seed(0)
    lstm = SharedGateLSTM(3, 5, num_layers=2).eval()
    for layer in lstm.layers:  # scales and biases away from their initial values, so every gate differs
        nn.init.normal_(layer.scale)
        nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 3)
    inputs = x
    for layer in lstm.layers:
        h, c, steps = torch.zeros(2, 5), torch.zeros(2, 5), []
        for t in range(x.shape[1]):
            pre = inputs[:, t] @ layer.weight_ih.T + h @ layer.weight_hh.T
            i, f, g, o = (layer.scale[k] * pre + layer.bias[k] for k in range(4))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            steps.append(h)
        inputs = torch.stack(steps, 1)
    outputs, (h_n, c_n) = lstm(x)
    torch.testing.assert_close(outputs, inputs)
    torch.testing.assert_close(h_n[-1], h)
    torch.testing.assert_close(c_n[-1], c)
    assert torch.equal(SharedGateLSTM(3, 5).layers[0].bias[1], torch.ones(5))  # forget bias starts at 1


def test_projected_lstm_equals_nn_lstm_with_the_same_weights() -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(6, 16, 2, batch_first=True, proj_size=4).eval()
    mine = ProjectedLSTM.from_lstm(reference)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    x, state = torch.randn(3, 7, 6), (torch.randn(2, 3, 4), torch.randn(2, 3, 16))
    for args in ((x,), (x, state)):
        (out, (h, c)), (ref_out, (ref_h, ref_c)) = mine(*args), reference(*args)
        for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    reference.load_state_dict(ProjectedLSTM(6, 16, 2, proj_size=4).state_dict())  # and back


def test_projected_lstm_trains_like_nn_lstm() -> None:
    """The same gradients as nn.LSTM(proj_size) (the loop's backward, not only its forward)."""
    torch.manual_seed(0)
    reference = nn.LSTM(6, 16, 2, batch_first=True, proj_size=4)
    mine = ProjectedLSTM.from_lstm(reference)
    x = torch.randn(3, 7, 6)
    for lstm in (reference, mine):
        lstm(x)[0].square().sum().backward()
    for (name, a), (_, b) in zip(mine.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0, msg=name)


def test_compiled_lstmp_runs_the_step_by_step_loop_on_its_own_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """model.compile=true: the compiled LSTMP traces the step-by-step loop (what Inductor fuses) on the
    nn.LSTM's own parameters, with nn.LSTM's outputs and gradients; eager stays nn.LSTM's native path.
    Dynamo's eager backend traces the same graph as Inductor's without needing a C++ compiler."""
    traced = []

    def recorded(lstm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        traced.append(type(lstm).__name__)
        return stepwise_lstmp(lstm, x)

    monkeypatch.setattr(lstm_module, "stepwise_lstmp", recorded)
    torch.manual_seed(0)
    net = small("lstmp").train()
    x = torch.randint(0, VOCAB, (3, SEQ))
    eager = net(x)
    assert traced == []
    grads = torch.autograd.grad(eager.square().sum(), list(net.parameters()))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=False):  # dynamo's default: every nn.LSTM runs eagerly
        torch.compile(net, backend="eager")(x)
    assert traced == [] and compiles_stepwise(net) and not compiles_stepwise(small("lstm"))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):  # what CompileNet sets for the fit of an LSTMP
        compiled = torch.compile(net, backend="eager")(x)
    assert traced and set(traced) == {"LSTMOutputs"}
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    for name, a, b in zip(
        [n for n, _ in net.named_parameters()],
        torch.autograd.grad(compiled.square().sum(), list(net.parameters())),
        grads,
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_exportable_swaps_in_the_step_by_step_lstmp_only() -> None:
    net = small("lstmp")
    x = torch.randint(0, VOCAB, (2, SEQ))
    copy = exportable(net)
    assert isinstance(copy.lstm, ProjectedLSTM) and not isinstance(net.lstm, ProjectedLSTM)
    torch.testing.assert_close(copy(x), net(x), atol=1e-5, rtol=0)
    plain = small("lstm")
    assert exportable(plain) is plain


@pytest.mark.parametrize(
    ("cls", "shape", "knobs", "message"),
    [
        (SequenceLSTM, (1, 8, 8), {}, r"model=lstm takes a sequence .* not images of shape \[1, 8, 8\]"),
        (CausalTransformer, (3, 32, 32), {}, r"model=transformer takes a sequence"),
        (
            SequenceLSTM,
            (SEQ,),
            {"hidden": 32, "proj_size": 32},
            r"model.proj_size=32 must be in \[0, model.hidden=32\)",
        ),
        (SequenceLSTM, (SEQ,), {"proj_size": -1}, r"model.proj_size=-1"),
        (SequenceLSTM, (SEQ,), {"proj_size": 8, "share_gates": True}, r"model.proj_size=8 with model.share_gates=true"),
        (SequenceLSTM, (SEQ,), {"dropout": 1.0}, r"model.dropout=1.0"),
        (CausalTransformer, (SEQ,), {"width": 30, "heads": 4}, r"model.width=30 must be a multiple of model.heads=4"),
    ],
)
def test_bad_shapes_and_knobs_are_refused_in_one_line(cls, shape, knobs, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        cls(shape, VOCAB, **knobs)
    assert "\n" not in str(err.value)


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt of 17 symbols is longer than the transformer's context of seq_len=16"):
        small("transformer")(torch.randint(0, VOCAB, (1, SEQ + 1)))


@pytest.mark.parametrize("name", SMALL)
def test_thirty_steps_lower_the_loss_on_a_fixed_sequence(name: str) -> None:
    torch.manual_seed(0)
    net = small(name).train()
    x = torch.randint(0, VOCAB, (8, SEQ))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", SMALL)
def test_torch_export_matches_eager(name: str) -> None:
    net = exportable(small(name))
    x = torch.randint(0, VOCAB, (2, SEQ))
    program = torch.export.export(net, (x,))
    torch.testing.assert_close(program.module()(x), net(x))


@pytest.mark.slow  # ~30 s for the four under load: the dynamo exporter unrolls the hand-written loops
@pytest.mark.parametrize("name", SMALL)
def test_onnx_export_runs_in_onnxruntime_like_eager(name: str, tmp_path) -> None:
    """torch.onnx's dynamo exporter (what `export=onnx` uses), a dynamic batch; nn.LSTM with proj_size
    only through `exportable` (exported as is, onnxruntime rejects its LSTM node)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    net = small(name)
    x = torch.randint(0, VOCAB, (2, SEQ))
    path = tmp_path / "net.onnx"
    batch = {0: torch.export.Dim("batch")}
    torch.onnx.export(exportable(net), (x,), dynamo=True, dynamic_shapes=(batch,), verbose=False).save(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for inputs in (x, torch.randint(0, VOCAB, (5, SEQ))):
        (logits,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), net(inputs), atol=1e-5, rtol=0)
