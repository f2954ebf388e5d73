"""Fast GRU and vanilla RNN layers for CPU training: a hand-written backward through time.

On the CPU, torch runs ``nn.GRU`` and ``nn.RNN`` as a generic loop of small operations, each
recorded by autograd, and runs backward as a walk over ``T x ~15`` graph nodes. At the sizes
tuned here (hidden <= 64, batch <= 64) the time is per-operation overhead, not arithmetic.
These layers keep the arithmetic and cut the overhead (issue 10, part 2):

* the input projection of every time step is one matmul before the loop;
* a GRU step is five in-place or ``out=`` ops on preallocated buffers (one ``addmm_``, then
  the gate math), an RNN step two, with nothing recorded by autograd;
* backward first computes, for all steps at once, every gate derivative that does not depend
  on the incoming gradient; a GRU step of backward is then three ops, an RNN step two;
* each weight gradient is one matmul over all ``T x B`` columns after the loop;
* the buffers and their per-step views are made once per shape and reused (a *workspace*):
  a training step creates no Python objects per time step. Without this, the thousand-odd
  view tensors a call would make set off Python's cyclic garbage collector, which then
  costs more than the whole recurrence (measured: 2.9 ms of a 5.7 ms forward).

:class:`FastGRU` and :class:`FastRNN` *are* ``nn.GRU`` / ``nn.RNN`` (subclasses): the same
parameters, names, shapes, initialisation and RNG use, so a state dict loads into either and
the same seed gives the same initial weights. They take the fast path when training on the
CPU (grad enabled; float32/float64; unidirectional, with biases, no projections, no
``PackedSequence``) and defer to torch otherwise: on CUDA cuDNN's kernels run as before, a
model moved between devices keeps working, and validation and prediction (no grad, large
batches) run torch's lean loop. Dropout between stacked layers draws the same mask as torch's.

Pure torch: no I/O.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from rnntune.workspace import Buffers, Lease, give, take

__all__ = ["FastGRU", "FastRNN", "gru_layer", "rnn_layer"]

_FAST_DTYPES = (torch.float32, torch.float64)


def _steps(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    return t.unbind(dim)


# --------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------
#
# torch's GRU, gates in the order r, z, n (rows of weight_ih / weight_hh):
#   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
#   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
#   h' = (1 - z) * n + z * h
#
# Layouts. The gate buffers are step-major, (T, C, B): a step's gate is one contiguous block,
# so a step's elementwise ops run over H x B contiguous values and a step's gradient is an
# outer broadcast. The states and the recurrent gradient are feature-major, (C, T, B): a
# step's slice is a BLAS matrix with a leading dimension, and all steps together are one
# (C, T*B) matrix, so each weight gradient is one matmul without copies.
#
# The state is carried as u = (h + 1) / 2. With tanh(a) = 2 sigmoid(2a) - 1, the candidate
# is n = 2s - 1 for s = sigmoid(2a), and the update (1 - z) n + z h becomes lerp(s, u, z) in
# u: one op, and sigmoid costs a third of tanh on the CPU.


class _GRUBuffers(Buffers):
    def __init__(self, key: tuple[Any, ...], T: int, B: int, H: int, like: torch.Tensor):
        super().__init__(key)
        new: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        # Forward. pre: r, z (after the loop) and 2 (W_hn h + b_hn); s = (n + 1) / 2; u.
        self.pre = torch.empty(T, 3 * H, B, **new)
        self.s = torch.empty(T, H, B, **new)
        self.u = torch.empty(H, T + 1, B, **new)
        self.pre_t, self.s_t, self.u_t = _steps(self.pre, 0), _steps(self.s, 0), _steps(self.u, 1)
        self.rz_t = _steps(self.pre[:, : 2 * H], 0)
        self.r_t = _steps(self.pre[:, :H], 0)
        self.z_t = _steps(self.pre[:, H : 2 * H], 0)
        self.gn_t = _steps(self.pre[:, 2 * H :], 0)
        # Backward, made at the first backward.
        self.coef: torch.Tensor | None = None

    def backward_buffers(self) -> None:
        if self.coef is not None:
            return
        T, H3, B = self.pre.shape
        H = H3 // 3
        new: dict[str, Any] = {"dtype": self.pre.dtype, "device": self.pre.device}
        self.coef = torch.empty(T, 3 * H, B, **new)  # d(gate pre-activation) / dh / k
        self.a = torch.empty(T, H, B, **new)
        self.zz = torch.empty(T, H, B, **new)
        self.dh = torch.empty(T + 1, H, B, **new)  # dL/dh_0 .. dL/dh_T
        self.dg = torch.empty(3 * H, T, B, **new)  # d(W_hh h + b_hh) / k per step
        self.dgn = torch.empty(H, T, B, **new)  # d(W_in x + b_in) / 4
        self.h_half = torch.empty(H, T, B, **new)  # h_0 .. h_{T-1}, halved
        self.coef_t = _steps(self.coef.view(T, 3, H, B), 0)
        self.dg3_t = _steps(self.dg.view(3, H, T, B), 2)
        self.dg_t = _steps(self.dg, 1)
        self.dh_t = _steps(self.dh, 0)


def _project(out: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> None:
    """``out[t] = w @ x[:, t] + bias`` for every step: ``out (T, R, B)``, ``x (F, T, B)``."""
    if x.shape[0] == 1:  # one channel: an outer product, one elementwise op
        torch.addcmul(bias[:, None], w, x[0].unsqueeze(1), out=out)
    else:
        torch.baddbmm(bias[:, None], w.expand(x.shape[1], -1, -1), x.transpose(0, 1), out=out)


class _GRUFunction(torch.autograd.Function):
    """One GRU layer, feature-major: ``(x (F,T,B), h0 (H,B), weights)`` → ``(out (H,T,B),
    h_T (H,B))`` (the wrapper :func:`gru_layer` takes and gives torch's layouts)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, T, B = x.shape
        H = w_hh.shape[1]
        ws = take(_GRUBuffers, (T, B, H), x)
        pre, s, u = ws.pre, ws.s, ws.u
        # W_hh h + b_hh = 2 W_hh u + (b_hh - W_hh 1); the n rows doubled again (s needs 2a).
        k = x.new_full((3 * H, 1), 2.0)
        k[2 * H :] = 4.0
        w_u = w_hh * k
        b_u = (b_hh - w_hh.sum(1)).mul_(k.squeeze(1)).mul_(0.5)
        # All steps' input projections at once: the r, z rows of pre start as everything but
        # the recurrent product, its n rows as their bias; s starts as 2 (W_in x + b_in).
        _project(pre[:, : 2 * H], b_ih[: 2 * H] + b_u[: 2 * H], w_ih[: 2 * H], x)
        _project(s, b_ih[2 * H :] * 2.0, w_ih[2 * H :] * 2.0, x)
        pre[:, 2 * H :] = b_u[2 * H :, None]
        torch.add(h0, 1.0, out=u[:, 0]).mul_(0.5)
        pre_t, s_t, u_t, rz_t, r_t, z_t, gn_t = (
            ws.pre_t, ws.s_t, ws.u_t, ws.rz_t, ws.r_t, ws.z_t, ws.gn_t
        )  # fmt: skip
        for t in range(T):
            pre_t[t].addmm_(w_u, u_t[t])  # (3H, B)
            rz_t[t].sigmoid_()  # r, z
            s_t[t].addcmul_(r_t[t], gn_t[t]).sigmoid_()  # s = (n + 1) / 2
            torch.lerp(s_t[t], u_t[t], z_t[t], out=u_t[t + 1])  # u' = (h' + 1) / 2
        out = u[:, 1:].mul(2.0).sub_(1.0)  # (H, T, B), a fresh tensor
        if any(ctx.needs_input_grad):
            ctx.lease = Lease(ws)
            ctx.save_for_backward(x, w_ih, w_hh, pre, s, u)
        else:
            give(ws)
        return out, out[:, T - 1].clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor, grad_hT: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, pre, s, u = ctx.saved_tensors
        ws = ctx.lease.ws
        ws.backward_buffers()
        F_, T, B = x.shape
        H = w_hh.shape[1]
        r, z, gn2 = pre[:, :H], pre[:, H : 2 * H], pre[:, 2 * H :]  # gn2 = 2 (W_hn h + b_hn)
        # The derivative of each gate's pre-activation is dh times a factor independent of
        # dh; all steps' factors at once, in few passes (1 - n^2 = 4s(1 - s), h - n = 2(u - s)):
        #   d(gh_r) = 2 c_r dh,  c_r = s(1-s)(1-z) r(1-r) gn2
        #   d(gh_z) = 2 c_z dh,  c_z = (u - s) z(1-z)
        #   d(gh_n) = 4 c_n dh,  c_n = s(1-s)(1-z) r           (of W_hn h + b_hn)
        #   d(gi_n) = 4 a dh,    a   = s(1-s)(1-z)             (of W_in x + b_in)
        # The constants k = 2, 2, 4 go into the weights and the final sums, not into passes.
        a, coef = ws.a, ws.coef
        c_r, c_z, c_n = coef[:, :H], coef[:, H : 2 * H], coef[:, 2 * H :]
        torch.addcmul(s, s, s, value=-1.0, out=a).addcmul_(a, z, value=-1.0)
        torch.mul(a, r, out=c_n)
        torch.addcmul(c_n, c_n, r, value=-1.0, out=c_r).mul_(gn2)
        torch.sub(u[:, :T].transpose(0, 1), s, out=c_z)
        c_z.mul_(torch.addcmul(z, z, z, value=-1.0, out=ws.zz))
        k = x.new_full((3 * H, 1), 2.0)
        k[2 * H :] = 4.0

        dh, dg = ws.dh, ws.dg
        dh[0].zero_()
        dh[1:].copy_(grad_out.transpose(0, 1))
        dh[T].add_(grad_hT)
        w_k = (w_hh * k).t()  # (H, 3H)
        coef_t, dg3_t, dg_t, z_t, dh_t = ws.coef_t, ws.dg3_t, ws.dg_t, ws.z_t, ws.dh_t
        for t in range(T - 1, -1, -1):
            torch.mul(coef_t[t], dh_t[t + 1], out=dg3_t[t])  # (3, H, B) * (H, B)
            dh_t[t].addcmul_(z_t[t], dh_t[t + 1]).addmm_(w_k, dg_t[t])

        # Weight gradients, one matmul each over all T * B columns: sum_t d(gh) h^T with
        # h / 2 = u - 0.5 formed first (2 dg u^T - dg 1 1^T would cancel where h ~ 0).
        dg2 = dg.view(3 * H, T * B)
        h_half = torch.sub(u[:, :T], 0.5, out=ws.h_half).view(H, T * B)
        d_w_hh = dg2.mm(h_half.t()).mul_(2.0 * k)
        d_b_hh = dg2.sum(1).mul_(k.squeeze(1))
        # The input side: d(gi) is d(gh) in the r and z rows, 4 a dh in the n rows.
        dgn = ws.dgn
        torch.mul(a, dh[1:], out=dgn.transpose(0, 1))
        dgn2, x2 = dgn.view(H, T * B), x.reshape(F_, T * B)
        d_w_ih = torch.cat((dg2[: 2 * H].mm(x2.t()), dgn2.mm(x2.t()))).mul_(k)
        d_b_ih = torch.cat((d_b_hh[: 2 * H], dgn2.sum(1).mul_(4.0)))
        dx = dh0 = None
        if ctx.needs_input_grad[0]:
            w_ik = (w_ih * k).t()  # (F, 3H)
            dx = w_ik[:, : 2 * H].mm(dg2[: 2 * H]).addmm_(w_ik[:, 2 * H :], dgn2).view(F_, T, B)
        if ctx.needs_input_grad[1]:
            dh0 = dh[0].clone()
        return dx, dh0, d_w_ih, d_w_hh, d_b_ih, d_b_hh


def gru_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer, time-major: ``x (T, B, F)``, ``h0 (B, H)`` → ``(out (T, B, H), h_T)``."""
    out, h_last = _GRUFunction.apply(_feature_major(x), h0.t(), w_ih, w_hh, b_ih, b_hh)
    return out.permute(1, 2, 0), h_last.t()


def _feature_major(x: torch.Tensor) -> torch.Tensor:
    """``(T, B, F)`` → ``(F, T, B)`` contiguous (a no-op for a layer's own output)."""
    return x.permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------
# Vanilla RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu
# --------------------------------------------------------------------------------------------
#
# All feature-major (C, T, B), two ops a step both ways; a tanh layer carries its state as
# u = (h + 1) / 2 = sigmoid(2a), like the GRU's candidate.


class _RNNBuffers(Buffers):
    def __init__(self, key: tuple[Any, ...], T: int, B: int, H: int, like: torch.Tensor):
        super().__init__(key)
        new: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        self.u = torch.empty(H, T + 1, B, **new)  # states u_0 .. u_T (or h for relu)
        self.u_t = _steps(self.u, 1)
        self.act: torch.Tensor | None = None

    def backward_buffers(self) -> None:
        if self.act is not None:
            return
        H, T1, B = self.u.shape
        new: dict[str, Any] = {"dtype": self.u.dtype, "device": self.u.device}
        self.act = torch.empty(H, T1 - 1, B, **new)  # the activation's derivative / k
        self.dpre = torch.empty(H, T1 - 1, B, **new)  # d(pre-activation) / k
        self.dh = torch.empty(H, T1, B, **new)  # dL/dh_0 .. dL/dh_T
        self.h_half = torch.empty(H, T1 - 1, B, **new)  # h_0 .. h_{T-1}, halved (tanh)
        self.act_t, self.dpre_t, self.dh_t = (
            _steps(self.act, 1), _steps(self.dpre, 1), _steps(self.dh, 1)
        )  # fmt: skip


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        relu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        F_, T, B = x.shape
        H = w_hh.shape[1]
        ws = take(_RNNBuffers, (T, B, H), x)
        u, u_t = ws.u, ws.u_t
        if relu:
            w_u, w_x, bias = w_hh, w_ih, b_ih + b_hh
            u[:, 0] = h0
        else:  # 2a = 2 W_ih x + 2 (b - W_hh 1) + 4 W_hh u
            w_u, w_x, bias = w_hh * 4.0, w_ih * 2.0, (b_ih + b_hh - w_hh.sum(1)) * 2.0
            torch.add(h0, 1.0, out=u[:, 0]).mul_(0.5)
        # All steps' input projections at once, in place of the states they lead to.
        torch.addmm(bias[:, None], w_x, x.reshape(F_, T * B), out=u[:, 1:].view(H, T * B))
        if relu:
            for t in range(T):
                u_t[t + 1].addmm_(w_u, u_t[t]).relu_()
        else:
            for t in range(T):
                u_t[t + 1].addmm_(w_u, u_t[t]).sigmoid_()
        out = u[:, 1:].clone() if relu else u[:, 1:].mul(2.0).sub_(1.0)  # (H, T, B)
        if any(ctx.needs_input_grad):
            ctx.lease, ctx.relu = Lease(ws), relu
            ctx.save_for_backward(x, w_ih, w_hh, u)
        else:
            give(ws)
        return out, out[:, T - 1].clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor, grad_hT: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, u = ctx.saved_tensors
        ws = ctx.lease.ws
        ws.backward_buffers()
        F_, T, B = x.shape
        H = w_hh.shape[1]
        # The activation's derivative for all steps at once: relu' = [h > 0], and
        # tanh' = 1 - h^2 = 4u(1 - u), whose 4 goes into the weights and the sums.
        act, dpre, dh = ws.act, ws.dpre, ws.dh
        if ctx.relu:
            torch.gt(u[:, 1:], 0, out=act)
            k = 1.0
        else:
            torch.addcmul(u[:, 1:], u[:, 1:], u[:, 1:], value=-1.0, out=act)
            k = 4.0
        dh[:, 0].zero_()
        dh[:, 1:].copy_(grad_out)
        dh[:, T].add_(grad_hT)
        w_k = (w_hh * k).t()
        act_t, dpre_t, dh_t = ws.act_t, ws.dpre_t, ws.dh_t
        for t in range(T - 1, -1, -1):
            torch.mul(act_t[t], dh_t[t + 1], out=dpre_t[t])
            dh_t[t].addmm_(w_k, dpre_t[t])
        d2, x2 = dpre.view(H, T * B), x.reshape(F_, T * B)
        if ctx.relu:
            d_w_hh = d2.mm(u[:, :T].reshape(H, T * B).t())
        else:  # h / 2 = u - 0.5, formed first (see the GRU's backward)
            h_half = torch.sub(u[:, :T], 0.5, out=ws.h_half).view(H, T * B)
            d_w_hh = d2.mm(h_half.t()).mul_(2.0 * k)
        db = d2.sum(1).mul_(k)
        dx = (w_ih * k).t().mm(d2).view(F_, T, B) if ctx.needs_input_grad[0] else None
        dh0 = dh[:, 0].clone() if ctx.needs_input_grad[1] else None
        return dx, dh0, d2.mm(x2.t()).mul_(k), d_w_hh, db, db.clone(), None


def rnn_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
    nonlinearity: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One vanilla RNN layer, time-major: ``x (T, B, F)``, ``h0 (B, H)`` → ``(out, h_T)``."""
    out, h_last = _RNNFunction.apply(
        _feature_major(x), h0.t(), w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu"
    )
    return out.permute(1, 2, 0), h_last.t()


# --------------------------------------------------------------------------------------------
# Modules: nn.GRU / nn.RNN with the fast path on the CPU
# --------------------------------------------------------------------------------------------


def _fast_path_applies(module: nn.RNNBase, x: Any, hx: Any) -> bool:
    return (
        # Without grad there is no backward to speed up, and validation batches are large
        # (4096): torch's own loop is as fast there, and lean (it keeps one step's gates,
        # where the kernel keeps all of them for backward: 0.7 GB at T=140, H=64, B=4096).
        torch.is_grad_enabled()
        and isinstance(x, torch.Tensor)  # not a PackedSequence
        and x.dim() == 3  # batched
        and x.device.type == "cpu"
        and x.dtype in _FAST_DTYPES
        and all(
            p is not None and p.device.type == "cpu" and p.dtype == x.dtype
            for p in module._flat_weights
        )
        and (hx is None or (isinstance(hx, torch.Tensor) and hx.dim() == 3))
        and module.bias
        and not module.bidirectional
        and module.proj_size == 0
        and x.numel() > 0
    )


def _dropout_as_torch(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout between layers with torch's own mask for the same RNG state.

    torch's CPU RNN drops out its contiguous time-major ``(T, B, H)`` output with
    ``input * empty_like(input).bernoulli_(1 - p) / (1 - p)``; the mask is drawn in that
    memory order here too, whatever the layout of ``x``, so seeded runs of either module
    draw the same masks.
    """
    mask = torch.empty(x.shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * mask.div_(1 - p)


def _stacked(
    module: nn.RNNBase, layer: Any, x: torch.Tensor, hx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``num_layers`` layers as torch does, dropout between them included."""
    if module.batch_first:
        x = x.transpose(0, 1)  # (T, B, F): torch's layers run time-major too
    B = x.shape[1]
    expected = (module.num_layers, B, module.hidden_size)
    if hx is None:
        hx = x.new_zeros(expected)
    elif hx.shape != expected:
        raise RuntimeError(f"Expected hidden size {expected}, got {tuple(hx.shape)}")
    finals = []
    for i in range(module.num_layers):
        w = module._flat_weights[4 * i : 4 * i + 4]  # weight_ih, weight_hh, bias_ih, bias_hh
        x, h_last = layer(x, hx[i], *w)
        finals.append(h_last)
        if module.dropout and module.training and i < module.num_layers - 1:
            x = _dropout_as_torch(x, module.dropout)
    out = x.transpose(0, 1) if module.batch_first else x
    return out, torch.stack(finals)


class FastGRU(nn.GRU):
    """``nn.GRU`` whose CPU forward and backward run :func:`gru_layer` (see the module doc)."""

    def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
        if not _fast_path_applies(self, input, hx):
            return super().forward(input, hx)
        return _stacked(self, gru_layer, input, hx)


class FastRNN(nn.RNN):
    """``nn.RNN`` whose CPU forward and backward run :func:`rnn_layer` (see the module doc)."""

    def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
        if not _fast_path_applies(self, input, hx):
            return super().forward(input, hx)
        nonlinearity = self.nonlinearity

        def layer(
            x: torch.Tensor, h0: torch.Tensor, *w: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            w_ih, w_hh, b_ih, b_hh = w  # the fast path has biases: four weights per layer
            return rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity)

        return _stacked(self, layer, input, hx)
