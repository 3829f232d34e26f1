"""NumPy references of the kernel ops (llmgpu/ops), in float64, written from the math and from
Hugging Face's Llama code, not from the shaders. tests/test_ops.py runs each op against its
reference; later work (a persistent decode kernel) reuses them phase by phase."""
import numpy as np


def rmsnorm(x, w, eps):
    """LlamaRMSNorm: x / sqrt(mean(x²) + eps) · w, per row."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * np.asarray(w, np.float64)


def embed(table, ids):
    return np.asarray(table, np.float64)[np.asarray(ids)]


def rope_cos_sin(inv_freq, positions):
    """(len(positions), hd/2) cos and sin of pos · inv_freq."""
    ang = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)[None, :]
    return np.cos(ang), np.sin(ang)


def rope(x, cos, sin):
    """Hugging Face's apply_rotary_pos_emb for x (..., hd) with cos/sin (..., hd/2): rotate_half
    pairs element i with i + hd/2."""
    x = np.asarray(x, np.float64)
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def split_qkv(qkv, n_heads, n_kv, hd):
    """Rows of the fused QKV output (M, (n_heads + 2·n_kv)·hd) → q (M, n_heads, hd), k, v (M, n_kv, hd)."""
    qkv = np.asarray(qkv, np.float64)
    M = qkv.shape[0]
    q = qkv[:, :n_heads * hd].reshape(M, n_heads, hd)
    k = qkv[:, n_heads * hd:(n_heads + n_kv) * hd].reshape(M, n_kv, hd)
    v = qkv[:, (n_heads + n_kv) * hd:].reshape(M, n_kv, hd)
    return q, k, v


def rope_qk(qkv, n_heads, n_kv, hd, inv_freq, pos0, eps=1e-6, q_norm=None, k_norm=None):
    """(q/k RMSNorm per head,) RoPE at positions pos0 + row: rotated q, k and the untouched v."""
    q, k, v = split_qkv(qkv, n_heads, n_kv, hd)
    if q_norm is not None:
        q, k = rmsnorm(q, q_norm, eps), rmsnorm(k, k_norm, eps)
    cos, sin = rope_cos_sin(inv_freq, pos0 + np.arange(q.shape[0]))
    return rope(q, cos[:, None], sin[:, None]), rope(k, cos[:, None], sin[:, None]), v


def attention(q, K, V, pos0):
    """Causal grouped-query attention. q (M, n_heads, hd) at positions pos0 + m; K, V
    (≥ pos0 + M, n_kv, hd) the cache. Query head h uses key/value head h // (n_heads / n_kv).
    Returns (M, n_heads, hd)."""
    q, K, V = (np.asarray(a, np.float64) for a in (q, K, V))
    M, nh, hd = q.shape
    group = nh // K.shape[1]
    out = np.empty_like(q)
    for m in range(M):
        L = pos0 + m + 1
        for h in range(nh):
            s = K[:L, h // group] @ q[m, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[m, h] = (p / p.sum()) @ V[:L, h // group]
    return out


def silu_mul_interleaved(gu, ff):
    """The fused gate/up output (M, 2·ff), gate and up interleaved per block of 32 → silu(gate)·up."""
    g = np.asarray(gu, np.float64).reshape(-1, ff // 32, 2, 32)
    gate, up = g[:, :, 0].reshape(-1, ff), g[:, :, 1].reshape(-1, ff)
    return gate / (1 + np.exp(-gate)) * up


def interleave32(gate, up):
    """Inverse of the layout above: (M, ff) gate and up → (M, 2·ff) interleaved per 32."""
    M, ff = gate.shape
    return np.stack([gate.reshape(M, ff // 32, 32), up.reshape(M, ff // 32, 32)], axis=2).reshape(M, 2 * ff)
