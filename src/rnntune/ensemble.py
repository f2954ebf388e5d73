"""k recurrent classifiers with the same architecture, trained as one: stacked parameters and
matrix products batched over the members.

The repeats of a family share every hyperparameter and differ only in their seed. A small
recurrent model leaves a CPU core (and more so a GPU) mostly idle: at hidden <= 64 a training
step is a few thousand tiny operations, and their fixed cost dominates. Running the k members'
per-step products as one batched matmul (``baddbmm`` over a leading member dimension) costs
little more than one member, while each member keeps its own weights, batch order and optimizer
state; no member's numbers ever mix with another's.

The layout is that of :class:`~rnntune.models.RecurrentClassifier`'s state dict with a leading
member dimension: ``rnn.weight_ih_l0`` of shape ``(k, G*H, F)`` and so on (``G`` gates: 1 for
RNN, 3 for GRU, 4 for LSTM, in torch's gate order). So members are stacked from and unstacked to
ordinary state dicts, and a member trained here loads into the ordinary model.

Pure torch: no I/O, no Optuna, no database.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rnntune.models import ModelConfig

__all__ = [
    "GATES",
    "supports",
    "group_size",
    "param_names",
    "stack",
    "unstack",
    "logits",
    "member_losses",
]

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def supports(config: ModelConfig) -> bool:
    """Whether members of ``config`` can be trained as one ensemble with results equal to
    training each alone. Dropout between stacked layers draws its masks from torch's global
    random stream, which a batched run cannot reproduce member by member."""
    return config.cell in GATES and (config.num_layers == 1 or config.dropout == 0.0)


def group_size(config: ModelConfig, device: str) -> int:
    """How many members to train as one on ``device``; 1 means one after another.

    Measured on one CPU thread against the fast single-model layers of ``rnntune.fastrnn``
    (``benchmarks/evaluation_speed.py --families rnn gru --hidden 16 32 64``, T=140, B=32, 10
    repeats): the ensemble is 1.5x (RNN) / 1.3x (GRU) faster at hidden 16, 1.2x / 1.0x at 32 and
    slower at 64 (0.9x RNN), so it is used on CPU for GRU and RNN up to hidden 32 only. torch's
    LSTM is one fused oneDNN kernel on CPU that beats the batched loop member for member. On a
    GPU every family is latency-bound at these sizes, so all batch (not measured here: no GPU).
    """
    if not supports(config):
        return 1
    if str(device).startswith("cuda"):
        return 10
    if config.cell == "lstm" or config.hidden_size > 32:
        return 1
    return 10


def param_names(config: ModelConfig) -> list[str]:
    """The trainable parameters, in ``RecurrentClassifier.parameters()`` order."""
    names = []
    for layer in range(config.num_layers):
        names += [
            f"rnn.weight_ih_l{layer}",
            f"rnn.weight_hh_l{layer}",
            f"rnn.bias_ih_l{layer}",
            f"rnn.bias_hh_l{layer}",
        ]
    return names + ["head.weight", "head.bias"]


def stack(config: ModelConfig, states: Sequence[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Members' state dicts -> one ``(k, ...)`` tensor per parameter (copies)."""
    return [torch.stack([s[name] for s in states]) for name in param_names(config)]


def unstack(config: ModelConfig, params: Sequence[torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Member ``i``'s state dict (detached copies)."""
    return {n: p[i].detach().clone() for n, p in zip(param_names(config), params, strict=True)}


def logits(config: ModelConfig, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(k, B, C)``.

    ``x``: ``(k, B, T, F)`` (each member its own batch) or ``(B, T, F)`` (one batch for all,
    e.g. the validation split).
    """
    # Feature-major and time-major inside: (T, k, F, B). Every step then reads one contiguous
    # (k, G*H, B) slice whose gates are contiguous blocks, so the elementwise gate math runs on
    # long contiguous runs instead of strided H-wide rows.
    seq = x.permute(2, 0, 3, 1) if x.dim() == 4 else x.permute(1, 2, 0).unsqueeze(1)
    h = seq
    for layer in range(config.num_layers):
        w_ih, w_hh, b_ih, b_hh = params[4 * layer : 4 * layer + 4]
        # The head reads the last step, or the mean over time of every step's hidden state.
        last = layer == config.num_layers - 1 and config.readout == "last"
        # The input projection of every step in one product: (T, k, G*H, B).
        proj = torch.matmul(w_ih, seq)
        if config.cell == "gru":
            # b_hh's candidate part sits inside r * (W_hn h + b_hn), so it stays per step.
            gx = (proj + b_ih[:, :, None]).contiguous()
            seq, h = _GRU.apply(gx, w_hh, b_hh, not last)
        else:
            gx = (proj + (b_ih + b_hh)[:, :, None]).contiguous()
            seq, h = (_LSTM if config.cell == "lstm" else _RNN).apply(gx, w_hh, not last)
    if config.readout == "mean":
        h = seq.mean(0)  # (T, k, H, B) -> (k, H, B)
    w_head, b_head = params[-2], params[-1]
    # h: (k, H, B) -> (k, B, C)
    return torch.baddbmm(b_head[:, None, :], h.transpose(1, 2), w_head.transpose(1, 2))


# The recurrences, with a hand-written backward through time: the forward loop runs without
# building a graph and the backward is one loop of in-place updates, each step a handful of
# operations on (k, G*H, B) tensors. Gate order and formulas are torch's (nn.RNN/GRU/LSTM).
# Input: the input projections gx (T, k, G*H, B) and W_hh (k, G*H, H); output: every hidden
# state (T, k, H, B) when the next layer needs them (else an empty tensor), and the last
# hidden state (k, H, B).


def _weight_grad(dgates: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """sum over t, b of dgates h_prev^T: (T, k, G, B), (T, k, H, B) -> (k, G, H), one bmm."""
    T, k, G, B = dgates.shape
    dg = dgates.permute(1, 2, 0, 3).reshape(k, G, T * B)
    hp = h_prev.permute(1, 0, 3, 2).reshape(k, T * B, -1)
    return torch.bmm(dg, hp)


def _bias_grad(dgates: torch.Tensor) -> torch.Tensor:
    """sum over t, b: (T, k, G, B) -> (k, G)."""
    return dgates.sum(3).sum(0)


def _previous(hs: torch.Tensor) -> torch.Tensor:
    """h_{t-1} for every t (zeros before the first step)."""
    return torch.cat([hs.new_zeros((1, *hs.shape[1:])), hs[:-1]])


def _add_output_grad(dh: torch.Tensor, grad_hs: torch.Tensor | None, t: int) -> torch.Tensor:
    return dh + grad_hs[t] if grad_hs is not None and grad_hs.numel() else dh


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all):  # type: ignore[override]
        T, k, H, B = gx.shape
        hs = gx.new_empty(T, k, H, B)
        h = gx.new_zeros(k, H, B)
        for t in range(T):
            h = torch.baddbmm(gx[t], w_hh, h, out=hs[t]).tanh_()
        ctx.save_for_backward(hs, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, w_hh = ctx.saved_tensors
        T, k, H, B = hs.shape
        w_hh_t = w_hh.transpose(1, 2)
        dgx = torch.empty_like(hs)
        ones = hs.new_ones(k, H, B)
        dh = grad_h if grad_h is not None else hs.new_zeros(k, H, B)
        for t in range(T - 1, -1, -1):
            dh = _add_output_grad(dh, grad_hs, t)
            h = hs[t]
            d = torch.mul(dh, torch.addcmul(ones, h, h, value=-1), out=dgx[t])
            dh = torch.bmm(w_hh_t, d)
        return dgx, _weight_grad(dgx, _previous(hs)), None


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, b_hh, keep_all):  # type: ignore[override]
        T, k, G, B = gx.shape
        H = G // 3
        bias = b_hh[:, :, None]
        hs = gx.new_empty(T, k, H, B)
        rz_all = gx.new_empty(T, k, 2 * H, B)
        n_all = gx.new_empty(T, k, H, B)
        gh_all = gx.new_empty(T, k, G, B)
        h = gx.new_zeros(k, H, B)
        for t in range(T):
            gh = torch.baddbmm(bias, w_hh, h, out=gh_all[t])  # (k, 3H, B)
            rz = torch.add(gx[t, :, : 2 * H], gh[:, : 2 * H], out=rz_all[t]).sigmoid_()
            n = torch.addcmul(gx[t, :, 2 * H :], rz[:, :H], gh[:, 2 * H :], out=n_all[t])
            n.tanh_()
            h = torch.lerp(n, h, rz[:, H:], out=hs[t])  # (1 - z) * n + z * h
        ctx.save_for_backward(hs, rz_all, n_all, gh_all, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, rz_all, n_all, gh_all, w_hh = ctx.saved_tensors
        T, k, H, B = hs.shape
        w_hh_t = w_hh.transpose(1, 2)
        dgh_all = hs.new_empty(T, k, 3 * H, B)  # d(W_hh h + b_hh)
        dpre_n_all = hs.new_empty(T, k, H, B)  # d(candidate pre-activation) = its gx grad
        h_prev = _previous(hs)
        ones = hs.new_ones(k, H, B)
        dh = grad_h if grad_h is not None else hs.new_zeros(k, H, B)
        for t in range(T - 1, -1, -1):
            dh = _add_output_grad(dh, grad_hs, t)
            rz, n, ghn = rz_all[t], n_all[t], gh_all[t, :, 2 * H :]
            r, z = rz[:, :H], rz[:, H:]
            drz = torch.addcmul(rz, rz, rz, value=-1)  # sigmoid': s (1 - s)
            d = dgh_all[t]
            # candidate: dh (1 - z) (1 - n^2)
            dpre_n = torch.mul(
                torch.addcmul(dh, dh, z, value=-1),
                torch.addcmul(ones, n, n, value=-1),
                out=dpre_n_all[t],
            )
            torch.mul(dh * (h_prev[t] - n), drz[:, H:], out=d[:, H : 2 * H])  # z
            torch.mul(dpre_n * ghn, drz[:, :H], out=d[:, :H])  # r
            torch.mul(dpre_n, r, out=d[:, 2 * H :])
            dh = torch.baddbmm(dh * z, w_hh_t, d)
        dgx = torch.cat([dgh_all[:, :, : 2 * H], dpre_n_all], dim=2)
        return dgx, _weight_grad(dgh_all, h_prev), _bias_grad(dgh_all), None


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all):  # type: ignore[override]
        T, k, G, B = gx.shape
        H = G // 4
        hs = gx.new_empty(T, k, H, B)
        act_all = gx.new_empty(T, k, G, B)  # i, f, g, o after their activations
        c_all = gx.new_empty(T, k, H, B)
        tc_all = gx.new_empty(T, k, H, B)
        h = gx.new_zeros(k, H, B)
        c = gx.new_zeros(k, H, B)
        for t in range(T):
            a = torch.baddbmm(gx[t], w_hh, h, out=act_all[t])
            a[:, : 2 * H].sigmoid_()
            a[:, 2 * H : 3 * H].tanh_()
            a[:, 3 * H :].sigmoid_()
            c = torch.addcmul(a[:, H : 2 * H] * c, a[:, :H], a[:, 2 * H : 3 * H], out=c_all[t])
            h = torch.mul(a[:, 3 * H :], torch.tanh(c, out=tc_all[t]), out=hs[t])
        ctx.save_for_backward(hs, act_all, c_all, tc_all, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, act_all, c_all, tc_all, w_hh = ctx.saved_tensors
        T, k, H, B = hs.shape
        w_hh_t = w_hh.transpose(1, 2)
        dgx = hs.new_empty(T, k, 4 * H, B)
        c_prev = _previous(c_all)
        ones = hs.new_ones(k, H, B)
        dh = grad_h if grad_h is not None else hs.new_zeros(k, H, B)
        dc = hs.new_zeros(k, H, B)
        dact = hs.new_empty(k, 4 * H, B)
        for t in range(T - 1, -1, -1):
            dh = _add_output_grad(dh, grad_hs, t)
            a, tc = act_all[t], tc_all[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            deriv = torch.addcmul(a, a, a, value=-1)  # s (1 - s) for i, f, o
            torch.addcmul(ones, g, g, value=-1, out=deriv[:, 2 * H : 3 * H])  # tanh'
            dc = torch.addcmul(dc, dh, o * torch.addcmul(ones, tc, tc, value=-1))
            torch.mul(dc, g, out=dact[:, :H])
            torch.mul(dc, c_prev[t], out=dact[:, H : 2 * H])
            torch.mul(dc, i, out=dact[:, 2 * H : 3 * H])
            torch.mul(dh, tc, out=dact[:, 3 * H :])
            dg = torch.mul(dact, deriv, out=dgx[t])
            dc = dc * f
            dh = torch.bmm(w_hh_t, dg)
        return dgx, _weight_grad(dgx, _previous(hs)), None


def member_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy ``(k,)`` for logits ``(k, B, C)`` and labels ``(k, B)``;
    their sum has, for each member's parameters, exactly that member's gradient."""
    k, B, C = out.shape
    return (
        F.cross_entropy(out.reshape(k * B, C), y.reshape(k * B), reduction="none")
        .view(k, B)
        .mean(1)
    )
