"""Workspaces: a layer's buffers and their per-step views, made once per shape and reused.

A recurrent layer's training step at the sizes tuned here is a few thousand tiny operations on
buffers of every time step. Allocating those buffers afresh for each batch costs more than the
arithmetic: large blocks come from the OS (``mmap``) and are given back when freed, so every
call pays a page fault per 4 KiB on first touch (measured for the 10-member GRU ensemble at
hidden 32: 18,900 faults a training step); and a thousand short-lived per-step views set off
Python's cyclic garbage collector. A workspace is made once per shape and handed out again.

A workspace is taken by a forward and given back when nothing can read it any more: at once for
a forward that will not be differentiated (its outputs are fresh tensors, never views of a
workspace), else when its graph is freed (a :class:`Lease` on the backward node gives it back),
so a retained graph can run backward again safely. Training alternates between two workspaces
per layer: the previous batch's graph lives until its loss is reassigned.

A workspace class subclasses :class:`Buffers` and is built as ``cls(key, *dims, like)``.

Pure torch: no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["KEEP_BYTES", "Buffers", "Lease", "clear", "give", "kept_bytes", "take"]


class Buffers:
    """A workspace: its pool key and its tensors (every tensor attribute counts in ``nbytes``)."""

    def __init__(self, key: tuple[Any, ...] | None) -> None:
        self.key = key

    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, torch.Tensor))


_KEEP_PER_SHAPE = 4  # two alternating per layer, for up to two layers of one shape
KEEP_BYTES = 256 * 2**20  # at most this much kept (one GRU workspace at T=140, H=B=64: 37 MB)
_pool: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
_pool_lock = threading.Lock()
_pool_bytes = 0


def take(cls: type[Buffers], dims: tuple[int, ...], like: torch.Tensor) -> Any:
    """A free workspace of ``cls`` for ``dims`` and ``like``'s dtype and device, or a new one."""
    global _pool_bytes
    # Buffers made in inference mode are inference tensors: kept apart from the others.
    key = (cls, dims, like.dtype, like.device, torch.is_inference_mode_enabled())
    with _pool_lock:
        free = _pool.get(key)
        if free:
            ws = free.pop()
            _pool_bytes -= ws.nbytes()
            return ws
    return cls(key, *dims, like)  # type: ignore[call-arg]


def give(ws: Buffers) -> None:
    """Hand ``ws`` back: kept for the next call of its shape, within :data:`KEEP_BYTES`."""
    global _pool_bytes
    assert ws.key is not None, "only a workspace from take() goes back to the pool"
    with _pool_lock:
        free = _pool.setdefault(ws.key, [])
        _pool.move_to_end(ws.key)
        if len(free) < _KEEP_PER_SHAPE:
            free.append(ws)
            _pool_bytes += ws.nbytes()
        while _pool_bytes > KEEP_BYTES:  # the least recently used shapes go first
            key, oldest = next(iter(_pool.items()))
            if oldest:
                _pool_bytes -= oldest.pop(0).nbytes()
            else:
                del _pool[key]


def kept_bytes() -> tuple[int, int]:
    """(the pool's running count, the sum over the workspaces it holds): equal when sound."""
    with _pool_lock:
        return _pool_bytes, sum(ws.nbytes() for free in _pool.values() for ws in free)


def clear() -> None:
    """Drop every kept workspace (tests: as in a fresh process)."""
    global _pool_bytes
    with _pool_lock:
        _pool.clear()
        _pool_bytes = 0


class Lease:
    """Held by a backward node: gives its workspace back when the graph is freed."""

    __slots__ = ("ws",)

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def __del__(self) -> None:
        give(self.ws)
