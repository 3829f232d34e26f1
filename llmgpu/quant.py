"""q4gsw: 4-bit, group-wise symmetric weights (with optional per-group offsets).

The format, specified once
--------------------------
A linear layer's weight ``W`` has shape ``(N, K) = (out_features, in_features)`` and computes
``y = x @ W.T``. Along K, every ``group_size`` consecutive values (32, 64 or 128; K must be a
multiple of it; it may differ between tensors) share one scale. Each weight is a signed 4-bit
integer ``q`` in [-8, 7]:

    w[n, k] = scales[n, k // group_size] * q[n, k]  (+ offsets[n, k // group_size])

Arrays (all C-contiguous):

* ``qweight``  ``(N, K // 8)`` uint32. Word ``j`` of row ``n`` holds ``k = 8j .. 8j+7``;
  element ``k = 8j + i`` sits in bits ``[4i, 4i+4)`` (low nibble first) as the unsigned
  nibble ``q + 8`` (0..15). So a row is K/2 bytes, little-endian nibble order along K.
* ``scales``   ``(N, K // group_size)`` float16. Scales may be negative (the quantizer
  uses the sign to put the largest-magnitude weight on the -8 level).
* ``offsets``  ``None`` or ``(N, K // group_size)`` float32. Present for asymmetric weights:
  quantized with ``asymmetric=True`` (``llmgpu quantize --asymmetric``), or imported (GGUF
  Q4_1: ``w = d*n + m``, n in 0..15, becomes ``s = d``, ``q = n - 8``, ``o = m + 8d``; m + 8d
  is exact in float32 for the f16 inputs seen in practice). Kernels add ``o_g * sum_{k in g} x_k``.

GGUF Q4_0 (an f16 scale ``d`` and 32 nibbles, value ``(nibble - 8) * d``) is this format
with group size 32 after re-ordering the nibbles, so it converts exactly.

Group size per tensor: :func:`group_size_for` takes the requested size where it divides K, else the
largest supported size that does (e.g. 64 for K = 576 when 128 is asked for); K not a multiple of 32
is refused. The choice depends on K alone, so weights that the runtime fuses (q/k/v, gate/up: they
share their input, hence K) always agree.

The quantizer picks each group's scale by a search over candidate scales that minimises the
group's squared reconstruction error (with the scale rounded to f16, as stored), not only
``absmax / 7``. Two options (:func:`quantize`):

* ``importance`` (K,) >= 0, e.g. E[x_k^2] of the layer's inputs on calibration text: the search
  minimises sum_k importance_k (w_k - w^_k)^2 per group, the diagonal of the output error
  ||X (W - W^)^T||^2, instead of the plain weight error, and refines the best scale by weighted
  least squares (llmgpu/calibrate.py);
* ``asymmetric``: per-group offsets too (``w = s q + o``), starting from the group's min/max
  (q = -8 on the minimum, +7 on the maximum), then a search over shrunken ranges, each refined by
  (weighted) least squares for s and o.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP_SIZES = (32, 64, 128)
from .defaults import DEFAULT_GROUP_SIZE  # noqa: E402  (re-exported)


@dataclass
class Q4Tensor:
    """One q4gsw weight: see the module docstring for the exact layout."""

    qweight: np.ndarray  # (N, K // 8) uint32
    scales: np.ndarray  # (N, K // group_size) float16
    group_size: int
    offsets: np.ndarray | None = None  # (N, K // group_size) float32, or None

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * 8

    @property
    def nbytes(self) -> int:
        n = self.qweight.nbytes + self.scales.nbytes
        return n + (self.offsets.nbytes if self.offsets is not None else 0)

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


def check_group_size(K: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"q4gsw group size must be one of {GROUP_SIZES}, got {group_size}")
    if K % group_size:
        raise ValueError(
            f"q4gsw needs in_features (K={K}) to be a multiple of the group size {group_size}; "
            f"pick a group size that divides K (one of {[g for g in GROUP_SIZES if K % g == 0] or 'none'})"
        )


def pack_nibbles(nib: np.ndarray) -> np.ndarray:
    """(N, K) integers 0..15 -> (N, K // 8) uint32, element 8j+i in bits [4i, 4i+4) of word j."""
    N, K = nib.shape
    n = nib.astype(np.uint32).reshape(N, K // 8, 8)
    shifts = (4 * np.arange(8, dtype=np.uint32))
    return np.bitwise_or.reduce(n << shifts, axis=2).astype(np.uint32)


def unpack_nibbles(qweight: np.ndarray) -> np.ndarray:
    """(N, K // 8) uint32 -> (N, K) uint8 nibbles 0..15."""
    N, W = qweight.shape
    shifts = (4 * np.arange(8, dtype=np.uint32))
    return ((qweight[:, :, None] >> shifts) & 0xF).astype(np.uint8).reshape(N, W * 8)


def dequantize(t, dtype=np.float32) -> np.ndarray:
    """Q4Tensor or Q8Tensor -> float (N, K)."""
    N, K = t.shape
    if isinstance(t, Q8Tensor):
        q = t.qweight.view(np.int8).reshape(N, K // 8, 8)[:, :, np.argsort(_EVEN_ODD)].astype(np.float32)
        w = q.reshape(N, K // 32, 32) * t.scales.astype(np.float32)[:, :, None]
        return w.reshape(N, K).astype(dtype)
    q = unpack_nibbles(t.qweight).astype(np.float32) - 8.0
    w = q.reshape(N, K // t.group_size, t.group_size) * t.scales.astype(np.float32)[:, :, None]
    if t.offsets is not None:
        w = w + t.offsets.astype(np.float32)[:, :, None]
    return w.reshape(N, K).astype(dtype)


def group_size_for(K: int, group_size: int) -> int:
    """The group size a tensor with ``K`` inputs gets when ``group_size`` is asked for: that size if it
    divides K, else the largest supported size that does. ValueError if none does."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"q4gsw group size must be one of {GROUP_SIZES}, got {group_size}")
    fits = [g for g in GROUP_SIZES if K % g == 0]
    if K % group_size == 0:
        return group_size
    if not fits:
        raise ValueError(f"q4gsw needs in_features (K={K}) to be a multiple of 32 (the smallest group size)")
    return max(fits)


# Candidate divisors for the scale search: s = m / c, where m is the group's largest-magnitude
# value (with its sign). c near -8 puts m on the q = -8 level, c near +7 on q = +7; values in
# between trade clipping of m for finer steps everywhere else.
_CANDIDATES = np.concatenate([np.linspace(-8.0, -6.0, 9), np.linspace(6.0, 7.5, 7)])
# With activation importance (calibration) also steps finer than m / 8 that clip m (to 2/3 of it):
# weights on unimportant inputs may be clipped for finer steps on the important ones (AWQ's clip search).
CLIP_CANDIDATES = np.concatenate([_CANDIDATES, -np.array([8.5, 9.0, 9.5, 10.0, 11.0, 12.0]),
                                  np.array([8.0, 8.5, 9.0, 10.0])])
CLIP = True  # the weighted search tries CLIP_CANDIDATES
# Asymmetric search: the fraction of the group's range given up at the bottom and at the top.
_SHRINK = (0.0, 0.03, 0.07, 0.12)


def quantize(w: np.ndarray, group_size: int = DEFAULT_GROUP_SIZE, *, asymmetric: bool = False,
             importance: np.ndarray | None = None) -> tuple[Q4Tensor, float]:
    """Quantize a float (N, K) matrix to q4gsw. Returns (tensor, relative Frobenius error).

    ``importance`` (K,) weights each input's squared error in the search (see the module docstring);
    ``asymmetric`` adds per-group offsets. The reported error is always the plain weight error."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"q4gsw quantizes 2-D weights, got shape {w.shape}")
    N, K = w.shape
    check_group_size(K, group_size)
    G = K // group_size
    wg = w.reshape(N, G, group_size)
    imp = None
    if importance is not None:
        imp = np.asarray(importance, np.float32)
        if imp.shape != (K,) or not np.isfinite(imp).all() or (imp < 0).any():
            raise ValueError(f"importance must be {K} finite values >= 0, got shape {imp.shape}")
        imp = (imp / (imp.mean() or 1.0) + 1e-6).reshape(1, G, group_size)  # + 1e-6: no input is free
    if asymmetric:
        s, o, q = _search_asymmetric(wg, imp)
    else:
        s, q = _search_symmetric(wg, imp)
        o = None
    t = Q4Tensor(pack_nibbles((q.astype(np.int32) + 8).reshape(N, K)), s, group_size, o)
    return t, relative_error(t, w)


def relative_error(t, w: np.ndarray) -> float:
    """||dequantize(t) - w|| / ||w|| (Frobenius; 0 for w = 0 reproduced exactly)."""
    w = np.asarray(w, np.float64)
    denom = float(np.sqrt((w * w).sum())) or 1.0
    return float(np.sqrt(((dequantize(t).astype(np.float64) - w) ** 2).sum())) / denom


def _levels(wg, s16, o=None):
    """q in [-8, 7] for scales ``s16`` (f16, (N, G)) and offsets ``o`` (f32 or None); 0 where s = 0."""
    s32 = s16.astype(np.float32)
    safe = np.where(s32 == 0, 1.0, s32)[:, :, None]
    x = wg if o is None else wg - o[:, :, None]
    q = np.clip(np.rint(x / safe), -8, 7)
    return np.where(s32[:, :, None] == 0, np.float32(0), q)  # float32: the error sums stay in f32


def _group_err(wg, q, s16, o, imp):
    r = q * s16.astype(np.float32)[:, :, None] - wg
    if o is not None:
        r = r + o[:, :, None]
    return ((r * r) if imp is None else (r * r * imp)).sum(axis=2)


def _search_symmetric(wg, imp):
    """The best f16 scale per group among s = m / c (c in _CANDIDATES), and its levels; with
    ``imp``, errors are weighted and the winner is refined by weighted least squares."""
    idx = np.abs(wg).argmax(axis=2)
    m = np.take_along_axis(wg, idx[:, :, None], axis=2)[:, :, 0]  # (N, G) signed max-magnitude
    best_err = np.full(m.shape, np.inf, dtype=np.float32)
    best_s = np.zeros(m.shape, dtype=np.float16)
    for c in (_CANDIDATES if imp is None or not CLIP else CLIP_CANDIDATES):
        s = (m / c).astype(np.float16)
        err = _group_err(wg, _levels(wg, s), s, None, imp)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
    if imp is not None:  # s = sum(i q w) / sum(i q^2) for the winner's levels, kept where better
        q = _levels(wg, best_s)
        den, num = (imp * q * q).sum(axis=2), (imp * q * wg).sum(axis=2)
        s = np.where(den > 0, num / np.where(den > 0, den, 1), best_s).astype(np.float16)
        err = _group_err(wg, _levels(wg, s), s, None, imp)
        best_s = np.where(err < best_err, s, best_s)
    return best_s, _levels(wg, best_s)


def _search_asymmetric(wg, imp):
    """Scales and offsets per group: the min/max range (shrunk by each pair in _SHRINK), each refined
    once by least squares for (s, o) given its levels; the lowest (weighted) error wins."""
    lo, hi = wg.min(axis=2), wg.max(axis=2)
    span = hi - lo
    best = (np.full(lo.shape, np.inf, np.float32), np.zeros(lo.shape, np.float16), np.zeros(lo.shape, np.float32))
    for a in _SHRINK:
        for b in _SHRINK:
            s = ((span * (1 - a - b)) / 15).astype(np.float16)
            o = (lo + a * span + 8 * s.astype(np.float32)).astype(np.float32)  # q = -8 on the (shrunk) min
            best = _keep_better(best, wg, s, o, imp)
            best = _keep_better(best, wg, *_refit(wg, _levels(wg, s, o), imp), imp)
    _, s, o = best
    return s, o, _levels(wg, s, o)


def _keep_better(best, wg, s16, o, imp):
    o = np.where(s16 == 0, wg.mean(axis=2), o).astype(np.float32)  # a constant group: o is its value
    err = _group_err(wg, _levels(wg, s16, o), s16, o, imp)
    better = err < best[0]
    return (np.where(better, err, best[0]), np.where(better, s16, best[1]), np.where(better, o, best[2]))


def _refit(wg, q, imp):
    """(s, o) minimising sum i (s q + o - w)^2 per group for fixed levels q: 2x2 normal equations;
    s rounded to f16, then o solved again for that s (o is stored in f32)."""
    i = np.ones_like(wg) if imp is None else np.broadcast_to(imp, wg.shape)
    si, sq, sqq = i.sum(2), (i * q).sum(2), (i * q * q).sum(2)
    sw, sqw = (i * wg).sum(2), (i * q * wg).sum(2)
    det = si * sqq - sq * sq
    ok = det > 1e-12 * np.maximum(si * sqq, 1e-30)
    s = np.where(ok, (si * sqw - sq * sw) / np.where(ok, det, 1), 0).astype(np.float16)
    o = (sw - s.astype(np.float32) * sq) / np.maximum(si, 1e-30)
    return s, o.astype(np.float32)


def random_q4(N: int, K: int, group_size: int = DEFAULT_GROUP_SIZE, rng=None,
              scale: float | None = None, offsets: bool = False) -> Q4Tensor:
    """Random weights created directly in packed form (benchmarks of large shapes, tests)."""
    rng = rng if rng is not None else np.random.default_rng()
    check_group_size(K, group_size)
    scale = scale if scale is not None else 1.0 / (np.sqrt(K) * 4.0)
    qw = rng.integers(0, 2**32, size=(N, K // 8), dtype=np.uint32)
    s = (rng.uniform(0.5, 1.5, size=(N, K // group_size)) * scale).astype(np.float16)
    o = None
    if offsets:
        o = (rng.uniform(-1, 1, size=(N, K // group_size)) * scale).astype(np.float32)
    return Q4Tensor(qw, s, group_size, o)


def q8_activations(x: np.ndarray) -> np.ndarray:
    """NumPy reference of quantize_q8.wgsl: x (M, K) → the dequantized int8 values d·q, per 32."""
    x = np.asarray(x, dtype=np.float32)
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(axis=2, keepdims=True)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(b * inv)
    return (q * (amax / np.float32(127.0))).reshape(x.shape)


@dataclass
class Q8Tensor:
    """An int8 weight (lm_head by default: 4 bits there visibly change answers, see loader).

    ``qweight`` (N, K // 4) uint32: per 8 consecutive k, one word holds the bytes of elements
    0, 2, 4, 6 and the next those of 1, 3, 5, 7 (the order the int8 activations use, so that
    packed 4×8-bit dot products pair them directly); ``scales`` (N, K // 32) float16;
    w = scale · q with q in [-127, 127], scale = max|w| / 127 per 32 values.
    """

    qweight: np.ndarray
    scales: np.ndarray
    group_size: int = 32
    offsets: None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * 4

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


_EVEN_ODD = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def quantize_q8(w: np.ndarray) -> tuple[Q8Tensor, float]:
    """Symmetric int8 per 32 values along K; returns (tensor, relative Frobenius error)."""
    w = np.asarray(w, dtype=np.float32)
    N, K = w.shape
    check_group_size(K, 32)
    g = w.reshape(N, K // 32, 32)
    s = (np.abs(g).max(axis=2) / 127.0).astype(np.float16)
    s32 = s.astype(np.float32)
    q = np.where(s32[:, :, None] > 0, np.rint(g / np.where(s32 > 0, s32, 1)[:, :, None]), 0)
    q = np.clip(q, -127, 127).astype(np.int8).reshape(N, K // 8, 8)[:, :, _EVEN_ODD]
    t = Q8Tensor(np.ascontiguousarray(q).view(np.uint32).reshape(N, K // 4), s)
    err = float(np.linalg.norm(dequantize(t) - w) / (np.linalg.norm(w) or 1.0))
    return t, err


# ---- GGUF block formats -------------------------------------------------------------------

def _q4_gguf_nibbles(qs: np.ndarray) -> np.ndarray:
    """(blocks, 16) uint8 -> (blocks, 32) nibbles: elements 0-15 low nibbles, 16-31 high."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def from_gguf_q4_0(raw: np.ndarray, N: int, K: int) -> Q4Tensor:
    """Exact conversion of a GGUF Q4_0 tensor (raw bytes, rows of K/32 blocks of 18 bytes)."""
    if K % 32:
        raise ValueError(f"Q4_0 tensor has K={K}, not a multiple of 32")
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(N * (K // 32), 18)
    d = b[:, :2].copy().view(np.float16).reshape(N, K // 32)
    nib = _q4_gguf_nibbles(b[:, 2:]).reshape(N, K)
    return Q4Tensor(pack_nibbles(nib), d, 32)


def from_gguf_q4_1(raw: np.ndarray, N: int, K: int) -> Q4Tensor:
    """Exact conversion of a GGUF Q4_1 tensor (blocks of 20 bytes: d, m f16, 16 bytes)."""
    if K % 32:
        raise ValueError(f"Q4_1 tensor has K={K}, not a multiple of 32")
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(N * (K // 32), 20)
    d = b[:, 0:2].copy().view(np.float16).reshape(N, K // 32)
    m = b[:, 2:4].copy().view(np.float16).reshape(N, K // 32)
    nib = _q4_gguf_nibbles(b[:, 4:]).reshape(N, K)
    o = m.astype(np.float32) + 8.0 * d.astype(np.float32)
    return Q4Tensor(pack_nibbles(nib), d, 32, o)

