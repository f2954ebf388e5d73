"""The fast CPU GRU/RNN layers: exact against torch, interchangeable with torch, deterministic."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rnntune import fastrnn, workspace
from rnntune.data import load_dataset, split_dataset
from rnntune.exceptions import Interrupted
from rnntune.fastrnn import FastGRU, FastRNN, gru_layer, rnn_layer
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.train import EpochResult, TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (fast class, torch class, extra constructor arguments)
KINDS = {
    "gru": (FastGRU, nn.GRU, {}),
    "rnn": (FastRNN, nn.RNN, {}),
    "rnn-relu": (FastRNN, nn.RNN, {"nonlinearity": "relu"}),
}


def _pair(kind: str, *args: int, seed: int = 0, **kwargs: object) -> tuple[nn.RNNBase, nn.RNNBase]:
    """The fast module and torch's, each built after ``torch.manual_seed(seed)``."""
    fast_cls, torch_cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    fast = fast_cls(*args, **extra, **kwargs)
    torch.manual_seed(seed)
    plain = torch_cls(*args, **extra, **kwargs)
    return fast, plain


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest value: the tolerance of the issue (1e-5)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def _run(module: nn.Module, x: torch.Tensor, h0: torch.Tensor | None, weights: torch.Tensor):
    """Outputs, final states and the gradients of a loss that uses every output and state."""
    x = x.detach().requires_grad_(True)
    inputs = [x] if h0 is None else [x, h0.detach().requires_grad_(True)]
    out, h_n = module(*inputs)
    loss = (out * weights).sum() + (h_n * h_n).sum()
    grads = torch.autograd.grad(loss, [*inputs, *module.parameters()])
    return out, h_n, grads


# --------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_float64(kind: str) -> None:
    layer = gru_layer if kind == "gru" else rnn_layer
    gates = 3 if kind == "gru" else 1
    torch.manual_seed(1)
    T, B, F, H = 6, 3, 2, 4
    args = [
        torch.randn(T, B, F),  # x
        torch.randn(B, H) * 0.5,  # h0
        torch.randn(gates * H, F) * 0.5,  # weight_ih
        torch.randn(gates * H, H) * 0.5,  # weight_hh
        torch.randn(gates * H) * 0.5,  # bias_ih
        torch.randn(gates * H) * 0.5,  # bias_hh
    ]
    args = [a.double().requires_grad_(True) for a in args]
    if kind == "rnn-relu":

        def fn(*a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return rnn_layer(*a, nonlinearity="relu")

    else:
        fn = layer
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_gradcheck_float64_stacked_module(kind: str) -> None:
    fast, _ = _pair(kind, 2, 3, num_layers=2, batch_first=True)
    fast = fast.double()
    names = [n for n, _ in fast.named_parameters()]
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, h0: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(fast, dict(zip(names, params, strict=True)), (x, h0))

    assert torch.autograd.gradcheck(fn, (x, h0, *fast.parameters()))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    ("T", "B", "F", "H", "layers", "batch_first"),
    [
        (140, 32, 1, 64, 1, True),  # a heartbeat, the largest hidden size tuned
        (50, 16, 4, 16, 1, True),  # the default synthetic data
        (1, 5, 3, 8, 1, True),  # one step
        (23, 7, 3, 12, 2, False),  # stacked, time-major
        (9, 1, 2, 5, 3, True),  # a batch of one, three layers
    ],
)
def test_matches_torch_fp32(
    kind: str, T: int, B: int, F: int, H: int, layers: int, batch_first: bool
) -> None:
    fast, plain = _pair(kind, F, H, num_layers=layers, batch_first=batch_first)
    torch.manual_seed(2)
    x = torch.randn((B, T, F) if batch_first else (T, B, F))
    h0 = torch.randn(layers, B, H) * 0.5
    weights = torch.randn((B, T, H) if batch_first else (T, B, H))
    for hx in (None, h0):
        got, want = _run(fast, x, hx, weights), _run(plain, x, hx, weights)
        assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
        assert _rel(got[0], want[0]) < 1e-5, "output"
        assert _rel(got[1], want[1]) < 1e-5, "h_n"
        names = ["x", "h0"][: 1 if hx is None else 2] + [n for n, _ in plain.named_parameters()]
        for name, g, w in zip(names, got[2], want[2], strict=True):
            assert g.shape == w.shape, name
            assert _rel(g, w) < 1e-5, name


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_multi_layer_dropout(kind: str) -> None:
    fast, plain = _pair(kind, 3, 8, num_layers=3, dropout=0.4, batch_first=True)
    x = torch.randn(4, 11, 3)
    weights = torch.randn(4, 11, 8)
    # Eval mode: no dropout, the same function as torch's.
    fast.eval(), plain.eval()
    got, want = _run(fast, x, None, weights), _run(plain, x, None, weights)
    assert _rel(got[0], want[0]) < 1e-5
    for g, w in zip(got[2], want[2], strict=True):
        assert _rel(g, w) < 1e-5
    # Training mode: torch's masks for the same RNG state, so the same function again.
    fast.train(), plain.train()
    torch.manual_seed(5)
    got = _run(fast, x, None, weights)
    torch.manual_seed(5)
    want = _run(plain, x, None, weights)
    assert _rel(got[0], want[0]) < 1e-5
    for g, w in zip(got[2], want[2], strict=True):
        assert _rel(g, w) < 1e-5
    # ... and dropout really is on: another draw gives another output.
    torch.manual_seed(6)
    assert _rel(_run(fast, x, None, weights)[0], got[0]) > 1e-3


# --------------------------------------------------------------------------------------------
# Interchangeable with torch's modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_same_seed_same_initial_weights_and_state_dict_both_ways(kind: str) -> None:
    fast, plain = _pair(kind, 3, 6, num_layers=2, dropout=0.1, seed=42)
    a, b = fast.state_dict(), plain.state_dict()
    assert list(a) == list(b) == [
        f"{w}_{part}_l{i}" for i in range(2) for w, part in
        (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))
    ]  # fmt: skip
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # torch -> fast and fast -> torch, strict: a checkpoint of either loads into the other.
    _, other = _pair(kind, 3, 6, num_layers=2, dropout=0.1, seed=7)
    fast.load_state_dict(other.state_dict())
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 5, 3)
    for m in (fast, plain, other):
        m.eval()
    torch.testing.assert_close(fast(x)[0], other(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain(x)[0], other(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_classifier_uses_the_fast_layer_with_unchanged_weights(cell: str) -> None:
    config = ModelConfig(cell=cell, input_size=2, hidden_size=5, num_layers=2, dropout=0.2)
    torch.manual_seed(3)
    model = RecurrentClassifier(config)
    assert type(model.rnn) is {"gru": FastGRU, "rnn": FastRNN}[cell]
    # The model as it was built before the fast layer (torch's module), after the same seed:
    # the same initial weights, so old checkpoints and seeds mean what they meant.
    torch.manual_seed(3)
    old_rnn = {"gru": nn.GRU, "rnn": nn.RNN}[cell](
        2, 5, num_layers=2, batch_first=True, dropout=0.2
    )
    old_head = nn.Linear(5, 2)
    old = {f"rnn.{k}": v for k, v in old_rnn.state_dict().items()}
    old |= {f"head.{k}": v for k, v in old_head.state_dict().items()}
    new = model.state_dict()
    assert list(new) == list(old)
    for key in new:
        assert torch.equal(new[key], old[key]), key


def test_falls_back_to_torch_where_it_does_not_apply() -> None:
    fast, plain = _pair("gru", 2, 4, batch_first=True)
    x = torch.randn(3, 6, 2)
    # Unbatched input, a PackedSequence, float16 parameters and input: torch's own path.
    torch.testing.assert_close(fast(x[0])[0], plain(x[0])[0])
    packed = pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True)
    torch.testing.assert_close(fast(packed)[0].data, plain(packed)[0].data)
    bi_fast, bi_plain = _pair("gru", 2, 4, batch_first=True, bidirectional=True)
    torch.testing.assert_close(bi_fast(x)[0], bi_plain(x)[0])
    # A wrong initial state gets torch's kind of error, not a shape error from inside.
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        fast(x, torch.zeros(2, 3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_moves_between_devices() -> None:
    fast, _ = _pair("gru", 2, 4, batch_first=True)
    x = torch.randn(3, 6, 2)
    on_cpu = fast(x)[0]
    on_gpu = fast.to("cuda")(x.to("cuda"))[0]  # cuDNN's kernel
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.to("cpu")(x)[0], on_cpu)


# --------------------------------------------------------------------------------------------
# Workspaces: reuse never changes a result
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_reused_workspaces_change_nothing(kind: str) -> None:
    fast, _ = _pair(kind, 2, 6, batch_first=True)
    x = torch.randn(4, 9, 2)
    weights = torch.randn(4, 9, 6)
    workspace.clear()
    first = _run(fast, x, None, weights)  # fresh buffers
    again = _run(fast, x, None, weights)  # reused ones
    for a, b in zip([first[0], first[1], *first[2]], [again[0], again[1], *again[2]], strict=True):
        assert torch.equal(a, b)
    # A forward whose graph is alive keeps its buffers: other calls of the same shape in the
    # meantime (with and without grad) do not touch what its backward reads.
    out, h_n = fast(x)
    loss = (out * weights).sum() + (h_n * h_n).sum()
    with torch.no_grad():
        fast(torch.randn(4, 9, 2))
    _run(fast, torch.randn(4, 9, 2), None, weights)
    grads = torch.autograd.grad(loss, list(fast.parameters()), retain_graph=True)
    _run(fast, torch.randn(4, 9, 2), None, weights)
    twice = torch.autograd.grad(loss, list(fast.parameters()))  # a retained graph, again
    for g, g2, want in zip(grads, twice, first[2][1:], strict=True):
        assert torch.equal(g, want) and torch.equal(g2, want)


def test_kept_workspaces_are_bounded() -> None:
    workspace.clear()
    fast, _ = _pair("gru", 1, 64, batch_first=True)
    for batch in range(1, 40):  # 39 shapes, each kept after its graph is freed
        fast(torch.randn(batch, 140, 1))[0].sum().backward()
    counted, held = workspace.kept_bytes()
    assert 0 < counted <= workspace.KEEP_BYTES
    assert held == counted


def test_double_backward_is_refused_clearly() -> None:
    fast, _ = _pair("gru", 2, 3, batch_first=True)
    x = torch.randn(2, 4, 2, requires_grad=True)
    (g,) = torch.autograd.grad(fast(x)[0].sum(), x, create_graph=True)
    # The gradient is not itself differentiable through the kernel: an error, never a
    # silently wrong second derivative.
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_inference_mode_no_grad_and_training_agree(kind: str) -> None:
    fast, _ = _pair(kind, 2, 6, batch_first=True)
    x = torch.randn(5, 7, 2)
    workspace.clear()
    # Inference mode first (validation before any training, in a fresh process): its
    # buffers are inference tensors, which training must not be handed.
    with torch.inference_mode():
        a = fast(x)[0]
    b = fast(x)[0]
    b.sum().backward()
    with torch.no_grad():
        c = fast(x)[0]
    with torch.inference_mode():
        d = fast(x)[0]
    # Without grad torch's own loop runs (lean for large validation batches): the same
    # function within fp32 rounding.
    assert torch.equal(a, c) and torch.equal(a, d)
    assert _rel(b, a) < 1e-5


# --------------------------------------------------------------------------------------------
# Training through rnntune: deterministic, resumable
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, ...]:
    s = split_dataset(load_dataset("synthetic:n=300,length=12,features=2,seed=4"), seed=0)
    return s.X_train, s.y_train, s.X_val, s.y_val


def _history(result: object) -> list[tuple[int, float, float]]:
    return [(h.epoch, h.train_loss, h.val_metric) for h in result.history]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_same_seed_same_metrics(small: tuple[np.ndarray, ...], cell: str) -> None:
    model = ModelConfig(cell=cell, input_size=2, hidden_size=6, num_layers=2, dropout=0.3)
    config = TrainConfig(learning_rate=1e-2, batch_size=16, max_epochs=3, patience=5, seed=11)
    a, b = fit(model, config, *small), fit(model, config, *small)
    assert _history(a) == _history(b)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_resume_is_bit_identical(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path, cell: str
) -> None:
    # Stacked with dropout: the resumed run must also draw the same dropout masks.
    model = ModelConfig(cell=cell, input_size=2, hidden_size=6, num_layers=2, dropout=0.3)
    config = TrainConfig(learning_rate=1e-2, batch_size=16, max_epochs=4, patience=10, seed=5)
    straight = fit(model, config, *small, checkpoint_path=tmp_path / "straight.pt")
    ckpt = tmp_path / "resumed.pt"
    stop = False

    def on_epoch(r: EpochResult) -> None:
        nonlocal stop
        stop = r.epoch == 2

    with pytest.raises(Interrupted):
        fit(
            model, config, *small, checkpoint_path=ckpt, on_epoch=on_epoch, should_stop=lambda: stop
        )
    workspace.clear()  # as in a fresh process: no workspace survives
    resumed = fit(model, config, *small, checkpoint_path=ckpt)
    assert resumed.resumed_from_epoch == 2 and _history(resumed) == _history(straight)
    end_a = torch.load(tmp_path / "straight.pt", weights_only=True)["model"]
    end_b = torch.load(ckpt, weights_only=True)["model"]
    for key in end_a:
        assert torch.equal(end_a[key], end_b[key]), key


def test_a_checkpoint_of_torchs_gru_resumes(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    """A checkpoint written before the fast layer (by nn.GRU) resumes: same keys and shapes."""
    model = ModelConfig(cell="gru", input_size=2, hidden_size=6)
    config = TrainConfig(learning_rate=1e-2, batch_size=16, max_epochs=3, patience=10, seed=5)
    ckpt = tmp_path / "c.pt"
    stop = False

    def on_epoch(r: EpochResult) -> None:
        nonlocal stop
        stop = True

    original = fastrnn.FastGRU.forward
    try:  # train epoch 1 with torch's GRU, as rnntune did before
        fastrnn.FastGRU.forward = nn.GRU.forward  # type: ignore[method-assign]
        with pytest.raises(Interrupted):
            fit(
                model,
                config,
                *small,
                checkpoint_path=ckpt,
                on_epoch=on_epoch,
                should_stop=lambda: stop,
            )
    finally:
        fastrnn.FastGRU.forward = original  # type: ignore[method-assign]
    resumed = fit(model, config, *small, checkpoint_path=ckpt)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_this_run == [2, 3]
