"""The synthetic generator: Normal/Abnormal windows with a class signal, AR(1) noise and
benign distractors, in bounded memory.
"""

from __future__ import annotations

import math

import numpy as np

from rnntune.data._spec import _check_synthetic_values

# Noise and effect sizes are tuned so a well-tuned recurrent model reaches a macro F1 of about
# 0.8-0.95 (not 1.0): the comparison between families is only informative below the ceiling.
_NOISE_STD = 0.3
_NOISE_AR = 0.6  # AR(1) coefficient: neighbouring steps share noise, like a real sensor
_DISTRACTOR_RATE = 0.3  # benign late spikes, in Normal and Abnormal windows alike
_CHUNK = 16_384  # sequences per block of signal synthesis: bounds temporaries (~13 MB each)
# Ranges of per-window parameters, drawn uniformly. The main component has at least two
# cycles per window, so that a drift is not just a slow sinusoid; effect sizes are wide, so
# that strong cases are learnt in a few epochs and weak ones keep the ceiling below 1.0.
_RANGES: dict[str, tuple[float, float]] = {
    "main_cycles": (2.0, 4.0),  # main component, cycles per window
    "minor_cycles": (8.0, 11.0),
    "main_amp": (0.7, 1.3),
    "minor_amp": (0.05, 0.2),
    "event_height": (3.0, 5.0),  # early transient (and benign late spike) height
    "event_gain_up": (2.0, 3.0),  # after the event the next channel gets louder ...
    "event_gain_down": (0.1, 0.35),  # ... or quieter
    "drift": (1.0, 3.0),  # total drift across the window
    "freq_factor": (2.2, 3.2),  # main frequency after a change / before (a slow-down is
    # hardly learnable in 50 steps: too little of a slow cycle is left to see)
}
_OFFSET_STD = 0.25


def make_synthetic(
    n: int, length: int, features: int, seed: int, abnormal_rate: float = 0.29
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor-like windows ``X`` (float32 ``[n, length, features]``) and labels ``y`` (int64).

    Every channel is a sum of two sinusoids (random frequency, phase and amplitude per window
    and channel), a random offset and AR(1) noise; 30 % of all windows carry a benign
    spike in their second half. ``round(n * abnormal_rate)`` windows are Abnormal, each with
    one of three patterns that a model only sees by remembering across the window:

    * **early event** - a transient in the first 20 % on one channel, after which the next
      channel's main component changes amplitude and phase (late spikes are the distractor);
    * **drift** - one channel drifts linearly across the window, by less than the noise per
      step: visible only by integrating over many steps;
    * **frequency change** - one channel's main frequency jumps up mid-window (phase-continuous).

    Deterministic in ``seed`` and bit-identical across CPUs (see :func:`_sin`); vectorised
    over windows, so 170,000 windows take a few seconds.
    """
    X, y, _ = _synthetic(n, length, features, seed, abnormal_rate)
    return X, y


def _synthetic(
    n: int, length: int, features: int, seed: int, abnormal_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_synthetic`, plus each window's pattern (-1 Normal, 0 event, 1 drift, 2 freq)."""
    _check_synthetic_values(n, length, features, seed, abnormal_rate)
    rng = np.random.default_rng(seed)
    T, F, R = length, features, _RANGES

    n_abnormal = min(max(round(n * abnormal_rate), 1), n - 1)
    y = np.zeros(n, dtype=np.int64)
    y[rng.permutation(n)[:n_abnormal]] = 1

    def signs() -> np.ndarray:
        return rng.choice((-1.0, 1.0), n)

    def either(p: float, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
        return np.where(rng.random(n) < p, rng.uniform(*a, n), rng.uniform(*b, n))

    # Every parameter is drawn for every sequence, in a fixed order, and used where it
    # applies: the stream of draws (hence the data) does not depend on the chunking below.
    params = {
        "pattern": np.where(y == 1, rng.integers(0, 3, n), -1),  # 0 event, 1 drift, 2 freq
        # Per channel, (n, F): the main and a minor sinusoid (cycles per window), an offset.
        "f1": rng.uniform(*R["main_cycles"], (n, F)),
        "f2": rng.uniform(*R["minor_cycles"], (n, F)),
        "a1": rng.uniform(*R["main_amp"], (n, F)),
        "a2": rng.uniform(*R["minor_amp"], (n, F)),
        "p1": rng.uniform(0.0, 2 * np.pi, (n, F)),
        "p2": rng.uniform(0.0, 2 * np.pi, (n, F)),
        "offset": rng.normal(0.0, _OFFSET_STD, (n, F)),
        # Per sequence, (n,): where and how strongly the pattern acts.
        "ch": rng.integers(0, F, n),
        "event_t": rng.uniform(0.04, 0.2, n) * T,
        "event_h": rng.uniform(*R["event_height"], n) * signs(),
        "event_gain": either(0.5, R["event_gain_up"], R["event_gain_down"]),
        "drift": rng.uniform(*R["drift"], n) * signs(),
        "change_t": rng.uniform(0.3, 0.55, n) * T,
        "change_f": rng.uniform(*R["freq_factor"], n),
        "has_spike": rng.random(n) < _DISTRACTOR_RATE,
        "spike_t": rng.uniform(0.55, 0.95, n) * T,
        "spike_h": rng.uniform(*R["event_height"], n) * signs(),
        "spike_ch": rng.integers(0, F, n),
    }

    # Stationary AR(1) noise, filtered in a time-major buffer so that each step is one
    # contiguous vectorised update (3x faster than a strided loop or scipy's lfilter).
    noise = rng.standard_normal((T, n, F), dtype=np.float32)
    noise[1:] *= np.float32(math.sqrt(1.0 - _NOISE_AR**2))
    for t in range(1, T):
        noise[t] += np.float32(_NOISE_AR) * noise[t - 1]
    noise *= np.float32(_NOISE_STD)
    X = np.ascontiguousarray(noise.transpose(1, 0, 2))  # (n, T, F)
    del noise

    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        X[s] += _signal({k: v[s] for k, v in params.items()}, T, F)
    return X, y, params["pattern"]


# sin(r) on [-pi/2, pi/2]: Taylor coefficients up to r^13 (error < 1e-9, far below float32).
_SIN_COEFFS = tuple(np.float32((-1) ** i / math.factorial(2 * i + 1)) for i in range(7))


def _sin(x: np.ndarray) -> np.ndarray:
    """sin(x) for float32 ``x`` from +, -, * and rint alone.

    IEEE 754 makes these bit-identical on every machine, whereas np.sin and np.exp dispatch to
    SIMD kernels that differ in the last bit between CPU generations (AVX2 vs AVX-512, ARM):
    a worker on other hardware would then build different "synthetic" data, and fail the
    experiment's fingerprint check.
    """
    k = np.rint(x * np.float32(1 / math.pi))  # x = k*pi + r, |r| <= pi/2
    # Cody-Waite: pi split in two floats, so k*pi is subtracted without losing r's precision.
    r = x - k * np.float32(3.140625)
    r -= k * np.float32(math.pi - 3.140625)
    r2 = r * r
    poly = r2 * _SIN_COEFFS[-1]
    for c in _SIN_COEFFS[-2:0:-1]:
        poly += c
        poly *= r2
    poly += _SIN_COEFFS[0]
    poly *= r
    # sin(r + k*pi) = (-1)^k sin(r); integer parity (np.remainder on floats is 40x slower).
    poly *= (1 - 2 * (k.astype(np.int32) & 1)).astype(np.float32)
    return poly


def _signal(p: dict[str, np.ndarray], T: int, F: int) -> np.ndarray:
    """The deterministic part of a block of windows, ``(c, T, F)`` float32.

    The plain signal is computed for all windows at once; each pattern then rewrites only the
    (window, channel) rows it acts on, which keeps the full-size work to two sines.
    """
    p = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in p.items()}
    steps = np.arange(1, T + 1, dtype=np.float32)  # (T,)
    w = np.float32(2 * np.pi / T)

    def bump(centre: np.ndarray, height: np.ndarray) -> np.ndarray:  # (k, T)
        z = (steps - 1 - centre[:, None]) / np.float32(0.8)
        z2p1 = np.float32(1.0) + z * z
        return height[:, None] / (z2p1 * z2p1)  # a bell about two steps wide

    main = p["a1"][:, :, None] * _sin(w * p["f1"][:, :, None] * steps + p["p1"][:, :, None])
    sig = main + p["a2"][:, :, None] * _sin(w * p["f2"][:, :, None] * steps + p["p2"][:, :, None])
    sig += p["offset"][:, :, None]  # (c, F, T)

    pattern, ch = p["pattern"], p["ch"]
    # Early event: a transient on one channel; from one step later the next channel's main
    # component is louder/quieter and shifted by a quarter period.
    k = np.flatnonzero(pattern == 0)
    later = (ch[k] + 1) % F
    after = steps - 1 >= p["event_t"][k, None] + 1  # (k, T)
    gain = np.where(after, p["event_gain"][k, None], np.float32(1.0))
    shifted = _sin(
        w * p["f1"][k, later, None] * steps
        + p["p1"][k, later, None]
        + after * np.float32(np.pi / 2)
    )
    sig[k, later] += p["a1"][k, later, None] * gain * shifted - main[k, later]
    sig[k, ch[k]] += bump(p["event_t"][k], p["event_h"][k])
    # Drift: a ramp from 0 to `drift` across the window.
    k = np.flatnonzero(pattern == 1)
    sig[k, ch[k]] += p["drift"][k, None] * (steps - 1) / np.float32(T - 1)
    # Frequency change through the instantaneous frequency, so the phase stays continuous (an
    # abrupt phase jump would be a one-step giveaway).
    k = np.flatnonzero(pattern == 2)
    freq = p["f1"][k, ch[k], None] * np.where(
        steps - 1 >= p["change_t"][k, None], p["change_f"][k, None], np.float32(1.0)
    )  # (k, T)
    changed = _sin(w * np.cumsum(freq, axis=1) + p["p1"][k, ch[k], None])
    sig[k, ch[k]] += p["a1"][k, ch[k], None] * changed - main[k, ch[k]]
    # Benign late spikes, in either class.
    k = np.flatnonzero(p["has_spike"])
    sig[k, p["spike_ch"][k]] += bump(p["spike_t"][k], p["spike_h"][k])
    return sig.transpose(0, 2, 1)  # (c, T, F)
