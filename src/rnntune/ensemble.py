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

__all__ = ["GATES", "supports", "param_names", "stack", "unstack", "logits", "member_losses"]

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def supports(config: ModelConfig) -> bool:
    """Whether members of ``config`` can be trained as one ensemble with results equal to
    training each alone. Dropout between stacked layers draws its masks from torch's global
    random stream, which a batched run cannot reproduce member by member."""
    return config.cell in GATES and (config.num_layers == 1 or config.dropout == 0.0)


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
    cell = config.cell
    # Time-major: (T, k, B, F) or (T, 1, B, F); each step then reads one contiguous slice.
    seq = x.permute(2, 0, 1, 3) if x.dim() == 4 else x.transpose(0, 1).unsqueeze(1)
    h = seq
    for layer in range(config.num_layers):
        w_ih, w_hh, b_ih, b_hh = params[4 * layer : 4 * layer + 4]
        # The input projection of every step in one product: (T, k, B, G*H).
        proj = torch.matmul(seq, w_ih.transpose(1, 2))
        last = layer == config.num_layers - 1
        if cell == "gru":
            # b_hh's candidate part sits inside r * (W_hn h + b_hn), so it stays per step.
            gx = (proj + b_ih[:, None, :]).contiguous()
            seq, h = _GRU.apply(gx, w_hh, b_hh, not last)
        else:
            gx = (proj + (b_ih + b_hh)[:, None, :]).contiguous()
            seq, h = (_LSTM if cell == "lstm" else _RNN).apply(gx, w_hh, not last)
    w_head, b_head = params[-2], params[-1]
    return torch.baddbmm(b_head[:, None, :], h, w_head.transpose(1, 2))  # (k, B, C)


# The recurrences, with a hand-written backward through time: the forward loop runs without
# building a graph and the backward is one loop of fused in-place updates, each step a handful
# of operations on (k, B, G*H) tensors. Gate order and formulas are torch's (nn.RNN/GRU/LSTM).
# Each returns (all hidden states (T, k, B, H) or an empty tensor, last hidden state (k, B, H)).


def _weight_grad(h_prev: torch.Tensor, dgates: torch.Tensor) -> torch.Tensor:
    """sum over t, b of dgates^T h_prev: (T, k, B, G), (T, k, B, H) -> (k, G, H), one bmm."""
    T, k, B, G = dgates.shape
    dg = dgates.permute(1, 3, 0, 2).reshape(k, G, T * B)
    hp = h_prev.permute(1, 0, 2, 3).reshape(k, T * B, -1)
    return torch.bmm(dg, hp)


def _previous(hs: torch.Tensor) -> torch.Tensor:
    """h_{t-1} for every t (zeros before the first step)."""
    return torch.cat([hs.new_zeros((1, *hs.shape[1:])), hs[:-1]])


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all):  # type: ignore[override]
        T, k, B, H = gx.shape
        w_hh_t = w_hh.transpose(1, 2)
        hs = gx.new_empty(T, k, B, H)
        h = gx.new_zeros(k, B, H)
        for t in range(T):
            h = torch.baddbmm(gx[t], h, w_hh_t, out=hs[t]).tanh_()
        ctx.save_for_backward(hs, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, w_hh = ctx.saved_tensors
        T, k, B, H = hs.shape
        dgx = torch.empty_like(hs)
        dh = grad_h.clone() if grad_h is not None else hs.new_zeros(k, B, H)
        for t in range(T - 1, -1, -1):
            if grad_hs is not None and grad_hs.numel():
                dh += grad_hs[t]
            h = hs[t]
            d = torch.mul(dh, torch.addcmul(torch.ones_like(h), h, h, value=-1), out=dgx[t])
            dh = torch.bmm(d, w_hh)
        return dgx, _weight_grad(_previous(hs), dgx), None


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, b_hh, keep_all):  # type: ignore[override]
        T, k, B, G = gx.shape
        H = G // 3
        w_hh_t = w_hh.transpose(1, 2)
        bias = b_hh[:, None, :]
        hs = gx.new_empty(T, k, B, H)
        rz_all = gx.new_empty(T, k, B, 2 * H)
        n_all = gx.new_empty(T, k, B, H)
        ghn_all = gx.new_empty(T, k, B, H)
        h = gx.new_zeros(k, B, H)
        for t in range(T):
            gh = torch.baddbmm(bias, h, w_hh_t)  # (k, B, 3H)
            rz = torch.add(gx[t, ..., : 2 * H], gh[..., : 2 * H], out=rz_all[t]).sigmoid_()
            ghn = ghn_all[t].copy_(gh[..., 2 * H :])
            n = torch.addcmul(gx[t, ..., 2 * H :], rz[..., :H], ghn, out=n_all[t]).tanh_()
            h = torch.lerp(n, h, rz[..., H:], out=hs[t])  # (1 - z) * n + z * h
        ctx.save_for_backward(hs, rz_all, n_all, ghn_all, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, rz_all, n_all, ghn_all, w_hh = ctx.saved_tensors
        T, k, B, H = hs.shape
        dgx = hs.new_empty(T, k, B, 3 * H)
        dgh = hs.new_empty(T, k, B, 3 * H)
        h_prev = _previous(hs)
        dh = grad_h.clone() if grad_h is not None else hs.new_zeros(k, B, H)
        for t in range(T - 1, -1, -1):
            if grad_hs is not None and grad_hs.numel():
                dh += grad_hs[t]
            rz, n, ghn = rz_all[t], n_all[t], ghn_all[t]
            r, z = rz[..., :H], rz[..., H:]
            drz_act = torch.addcmul(rz, rz, rz, value=-1)  # sigmoid': s (1 - s)
            d = dgx[t]
            # n: d pre_n = dh (1 - z) (1 - n^2)
            dpre_n = torch.mul(
                torch.addcmul(dh, dh, z, value=-1),
                torch.addcmul(torch.ones_like(n), n, n, value=-1),
                out=d[..., 2 * H :],
            )
            # z: dh (h_prev - n) z (1 - z);  r: dpre_n * ghn * r (1 - r)
            torch.mul(dh * (h_prev[t] - n), drz_act[..., H:], out=d[..., H : 2 * H])
            torch.mul(dpre_n * ghn, drz_act[..., :H], out=d[..., :H])
            g = dgh[t]
            g[..., : 2 * H].copy_(d[..., : 2 * H])
            torch.mul(dpre_n, r, out=g[..., 2 * H :])
            dh = torch.baddbmm(dh * z, g, w_hh)
        return dgx, _weight_grad(h_prev, dgh), dgh.sum((0, 2)), None


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all):  # type: ignore[override]
        T, k, B, G = gx.shape
        H = G // 4
        w_hh_t = w_hh.transpose(1, 2)
        hs = gx.new_empty(T, k, B, H)
        act_all = gx.new_empty(T, k, B, G)  # i, f, g, o after their activations
        c_all = gx.new_empty(T, k, B, H)
        tc_all = gx.new_empty(T, k, B, H)
        h = gx.new_zeros(k, B, H)
        c = gx.new_zeros(k, B, H)
        for t in range(T):
            a = torch.baddbmm(gx[t], h, w_hh_t, out=act_all[t])
            a[..., : 2 * H].sigmoid_()
            a[..., 2 * H : 3 * H].tanh_()
            a[..., 3 * H :].sigmoid_()
            c = torch.addcmul(a[..., H : 2 * H] * c, a[..., :H], a[..., 2 * H : 3 * H], out=c_all[t])
            tc = torch.tanh(c, out=tc_all[t])
            h = torch.mul(a[..., 3 * H :], tc, out=hs[t])
        ctx.save_for_backward(hs, act_all, c_all, tc_all, w_hh)
        ctx.set_materialize_grads(False)
        return (hs if keep_all else hs.new_empty(0)), h.clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, act_all, c_all, tc_all, w_hh = ctx.saved_tensors
        T, k, B, H = hs.shape
        dgx = hs.new_empty(T, k, B, 4 * H)
        c_prev_all = _previous(c_all)
        dh = grad_h.clone() if grad_h is not None else hs.new_zeros(k, B, H)
        dc = hs.new_zeros(k, B, H)
        dact = hs.new_empty(k, B, 4 * H)
        for t in range(T - 1, -1, -1):
            if grad_hs is not None and grad_hs.numel():
                dh += grad_hs[t]
            a, tc = act_all[t], tc_all[t]
            i, f, g, o = a[..., :H], a[..., H : 2 * H], a[..., 2 * H : 3 * H], a[..., 3 * H :]
            deriv = torch.addcmul(a, a, a, value=-1)  # s (1 - s) for i, f, o
            torch.addcmul(torch.ones_like(g), g, g, value=-1, out=deriv[..., 2 * H : 3 * H])
            dc = torch.addcmul(dc, dh, o * torch.addcmul(torch.ones_like(tc), tc, tc, value=-1))
            torch.mul(dc, g, out=dact[..., :H])
            torch.mul(dc, c_prev_all[t], out=dact[..., H : 2 * H])
            torch.mul(dc, i, out=dact[..., 2 * H : 3 * H])
            torch.mul(dh, tc, out=dact[..., 3 * H :])
            dg = torch.mul(dact, deriv, out=dgx[t])
            dc = dc * f
            dh = torch.bmm(dg, w_hh)
        return dgx, _weight_grad(_previous(hs), dgx), None


def member_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy ``(k,)`` for logits ``(k, B, C)`` and labels ``(k, B)``;
    their sum has, for each member's parameters, exactly that member's gradient."""
    k, B, C = out.shape
    return F.cross_entropy(out.reshape(k * B, C), y.reshape(k * B), reduction="none").view(k, B).mean(1)
