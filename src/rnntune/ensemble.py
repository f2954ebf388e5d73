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
from typing import Any

import torch
import torch.nn.functional as F

from rnntune import workspace
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
    repeats): the ensemble is 1.9x (RNN) / 1.7x (GRU) faster at hidden 16, 1.4x / 1.1x at 32,
    and at 64 1.2x (RNN, one run) / 0.65x (GRU), so it is used on CPU for GRU and RNN up to
    hidden 32. The same benchmark's batching ceiling (k small products against one batched
    product) bounds it: about 3.5x at hidden 16, 2x at 32, 1.2-1.6x at 64. torch's LSTM is one
    fused oneDNN kernel on CPU that beats the batched loop member for member. On a GPU every
    family is latency-bound at these sizes, so all batch (not measured here: no GPU).
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
    train = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    for layer in range(config.num_layers):
        w_ih, w_hh, b_ih, b_hh = params[4 * layer : 4 * layer + 4]
        # The head reads the last step, or the mean over time of every step's hidden state.
        last = layer == config.num_layers - 1 and config.readout == "last"
        # The input projection of every step in one product: (T, k, G*H, B).
        proj = torch.matmul(w_ih, seq)
        if config.cell == "gru":
            # The biases go straight into the layer's buffers (one pass, no copy of proj).
            seq, h = _GRU.apply(proj, b_ih, w_hh, b_hh, not last, train)
        else:
            gx = (proj + (b_ih + b_hh)[:, :, None]).contiguous()
            seq, h = (_LSTM if config.cell == "lstm" else _RNN).apply(gx, w_hh, not last, train)
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


class _Buffers(workspace.Buffers):
    """A GRU or RNN ensemble layer's buffers for one shape (``rnntune.workspace``): ``hs``
    (T+1, k, H, B) the states with the zero initial state in front; for a GRU ``pre``
    (T, k, 3H, B) the gates and ``n`` (T, k, H, B) the candidate; and, made at the first
    backward, ``D`` (T+1, k, H, B) the gradient into each state and, for a GRU, ``coef`` and
    ``dg`` (backward factors and gate gradients, shaped like ``pre``). The per-step views
    are taken once, so the loops create no tensors of their own."""

    def __init__(
        self,
        key: tuple[Any, ...] | None,
        T: int,
        k: int,
        G: int,
        H: int,
        B: int,
        like: torch.Tensor,
    ) -> None:
        super().__init__(key)
        new: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        self.hs = torch.empty(T + 1, k, H, B, **new)
        self.hs[0].zero_()
        self.h_t = self.hs.unbind(0)
        if G == 3:
            self.pre = torch.empty(T, k, 3 * H, B, **new)
            self.n = torch.empty(T, k, H, B, **new)
            self.pre_t, self.n_t = self.pre.unbind(0), self.n.unbind(0)
            self.rz_t = self.pre[:, :, : 2 * H].unbind(0)
            self.r_t, self.z_t, self.gn_t = (
                self.pre[:, :, i * H : (i + 1) * H].unbind(0) for i in range(3)
            )
        self.D: torch.Tensor | None = None

    def backward_buffers(self, G: int) -> None:
        if self.D is not None:
            return
        self.D = torch.empty_like(self.hs)
        self.D_t = self.D.unbind(0)
        if G == 3:
            T1, k, H, B = self.hs.shape
            self.D1_t = self.D.unsqueeze(2).unbind(0)  # (k, 1, H, B): broadcast over the gates
            self.a = torch.empty_like(self.n)
            self.coef, self.dg = torch.empty_like(self.pre), torch.empty_like(self.pre)
            self.dg_t = self.dg.unbind(0)
            self.coef_t = self.coef.view(T1 - 1, k, 3, H, B).unbind(0)
            self.dg3_t = self.dg.view(T1 - 1, k, 3, H, B).unbind(0)


def _buffers(gx: torch.Tensor, G: int, train: bool) -> _Buffers:
    """A workspace when the call will be differentiated, else fresh (inference batches are
    large and come once an epoch: nothing to gain from keeping their buffers)."""
    T, k, GH, B = gx.shape
    dims = (T, k, G, GH // G, B)
    if train:
        return workspace.take(_Buffers, dims, gx)
    return _Buffers(None, *dims, gx)


def _finish(ctx, ws: _Buffers, train: bool, keep_all: bool, *saved: torch.Tensor):  # noqa: ANN001, ANN202
    """Save for backward (holding the workspace until the graph is freed); outputs are fresh
    tensors, never views of a workspace."""
    T = ws.hs.shape[0] - 1
    if train:
        ctx.lease = workspace.Lease(ws)
        ctx.save_for_backward(*saved)
    ctx.set_materialize_grads(False)
    return (ws.hs[1:].clone() if keep_all else ws.hs.new_empty(0)), ws.hs[T].clone()


def _output_grads(ws: _Buffers, grad_hs: torch.Tensor | None, grad_h: torch.Tensor | None):  # noqa: ANN202
    """``D[j]`` starts as the gradient from outside the layer into the hidden state ``h_j``
    (``h_0`` the zero initial state, ``h_{t+1}`` step t's output); the backward loop then adds
    what flows back through the recurrence."""
    D = ws.D
    assert D is not None
    T = D.shape[0] - 1
    D[0].zero_()
    if grad_hs is not None and grad_hs.numel():
        D[1:].copy_(grad_hs)
    else:
        D[1:].zero_()
    if grad_h is not None:
        D[T].add_(grad_h)
    return D


# A step is a few in-place or ``out=`` ops on a workspace's per-step views. Backward first
# computes, for all steps at once, each gate's derivative as a factor of the incoming gradient;
# a step of backward is then one product with those factors and one batched matmul.


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all, train):  # type: ignore[override]
        ws = _buffers(gx, 1, train)
        h_t, gx_t = ws.h_t, gx.unbind(0)
        for t in range(gx.shape[0]):
            torch.baddbmm(gx_t[t], w_hh, h_t[t], out=h_t[t + 1]).tanh_()
        return _finish(ctx, ws, train, keep_all, ws.hs, w_hh)

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, w_hh = ctx.saved_tensors
        ws = ctx.lease.ws
        ws.backward_buffers(1)
        T = hs.shape[0] - 1
        w_hh_t = w_hh.transpose(1, 2).contiguous()
        _output_grads(ws, grad_hs, grad_h)
        d = torch.addcmul(torch.ones_like(hs[1:]), hs[1:], hs[1:], value=-1)  # tanh'
        D_t, d_t = ws.D_t, d.unbind(0)
        for t in range(T - 1, -1, -1):
            d_t[t].mul_(D_t[t + 1])
            D_t[t].baddbmm_(w_hh_t, d_t[t])
        return d, _weight_grad(d, hs[:T]), None, None


class _GRU(torch.autograd.Function):
    # Gates r, z, n in torch's order; per step, after the loop's ops, ``pre`` holds r and z
    # (after their sigmoids) and gn = W_hn h + b_hn; ``n`` the candidate.

    @staticmethod
    def forward(ctx, proj, b_ih, w_hh, b_hh, keep_all, train):  # type: ignore[override]
        # proj = W_ih x for every step (T, k, 3H, B). b_hh's candidate part sits inside
        # r * (W_hn h + b_hn), so it stays per step; the others join the input projection.
        T, k, G, B = proj.shape
        H = G // 3
        ws = _buffers(proj, 3, train)
        pre, n = ws.pre, ws.n
        bias_rz = (b_ih[:, : 2 * H] + b_hh[:, : 2 * H])[:, :, None]
        torch.add(proj[:, :, : 2 * H], bias_rz, out=pre[:, :, : 2 * H])
        pre[:, :, 2 * H :] = b_hh[:, 2 * H :, None]
        torch.add(proj[:, :, 2 * H :], b_ih[:, 2 * H :, None], out=n)
        pre_t, rz_t, n_t, h_t = ws.pre_t, ws.rz_t, ws.n_t, ws.h_t
        r_t, z_t, gn_t = ws.r_t, ws.z_t, ws.gn_t
        for t in range(T):
            pre_t[t].baddbmm_(w_hh, h_t[t])
            rz_t[t].sigmoid_()
            n_t[t].addcmul_(r_t[t], gn_t[t]).tanh_()
            torch.lerp(n_t[t], h_t[t], z_t[t], out=h_t[t + 1])  # (1 - z) n + z h
        return _finish(ctx, ws, train, keep_all, ws.hs, pre, n, w_hh)

    @staticmethod
    def backward(ctx, grad_hs, grad_h):  # type: ignore[override]
        hs, pre, n, w_hh = ctx.saved_tensors
        ws = ctx.lease.ws
        ws.backward_buffers(3)
        T, k, G, B = pre.shape
        H = G // 3
        r, z, gn = pre[:, :, :H], pre[:, :, H : 2 * H], pre[:, :, 2 * H :]
        # Each gate pre-activation's derivative is dh times a factor independent of dh:
        #   d(W_in x + b_in) = a dh,        a   = (1 - z)(1 - n^2)
        #   d(gn)            = c_n dh,      c_n = a r
        #   d(r pre-act.)    = c_r dh,      c_r = a r (1 - r) gn
        #   d(z pre-act.)    = c_z dh,      c_z = (h_prev - n) z (1 - z)
        a, coef = ws.a, ws.coef
        torch.mul(n, n, out=a).neg_().add_(1.0).addcmul_(a, z, value=-1)
        c_r, c_z, c_n = coef[:, :, :H], coef[:, :, H : 2 * H], coef[:, :, 2 * H :]
        torch.mul(a, r, out=c_n)
        torch.addcmul(c_n, c_n, r, value=-1, out=c_r).mul_(gn)
        torch.sub(hs[:T], n, out=c_z).mul_(torch.addcmul(z, z, z, value=-1))
        D = _output_grads(ws, grad_hs, grad_h)
        w_hh_t = w_hh.transpose(1, 2).contiguous()
        coef_t, dg3_t, dg_t, D_t, D1_t = ws.coef_t, ws.dg3_t, ws.dg_t, ws.D_t, ws.D1_t
        for t in range(T - 1, -1, -1):
            torch.mul(coef_t[t], D1_t[t + 1], out=dg3_t[t])
            D_t[t].addcmul_(ws.z_t[t], D_t[t + 1]).baddbmm_(w_hh_t, dg_t[t])
        dg = ws.dg  # d(W_hh h + b_hh) per step
        dgx = torch.cat([dg[:, :, : 2 * H], a.mul_(D[1:])], dim=2)  # d(proj)
        return dgx, _bias_grad(dgx), _weight_grad(dg, hs[:T]), _bias_grad(dg), None, None


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, w_hh, keep_all, train):  # type: ignore[override]
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
        return dgx, _weight_grad(dgx, _previous(hs)), None, None


def member_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy ``(k,)`` for logits ``(k, B, C)`` and labels ``(k, B)``;
    their sum has, for each member's parameters, exactly that member's gradient."""
    k, B, C = out.shape
    return (
        F.cross_entropy(out.reshape(k * B, C), y.reshape(k * B), reduction="none")
        .view(k, B)
        .mean(1)
    )
