"""The ops around the linears: RMSNorm, embedding lookup, RoPE + KV-cache write, decode and
prefill attention, SiLU·mul, and int8 quantization of activations. One function per WGSL entry
point; each takes named buffers and the shape they hold, checks the buffers against it, and
returns a recorded `Op`. Buffer layouts are in each shader's header."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..gpu import Device
from .codegen import flash_snippets
from .core import Op, esize, make_op, need

F32 = 4


@dataclass(frozen=True)
class Heads:
    """The attention shape an op needs: heads, key/value heads, head size, cache length."""

    n_heads: int
    n_kv: int
    head_dim: int
    max_seq: int

    @property
    def qkv_dim(self) -> int:  # a row of the fused QKV projection's output
        return (self.n_heads + 2 * self.n_kv) * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    def cache_bytes(self, cache_t: str) -> int:  # one layer's keys (or values)
        return self.max_seq * self.n_kv * self.head_dim * esize(cache_t)


@dataclass
class Q8Act:
    """Activations quantized to int8 per 32 values (quantize_q8.wgsl), the Q8 GEMV's input."""

    xq: object  # (M, K/4) u32: packed int8, per 8 values the even elements' bytes, then the odd
    xd: object  # (M, K/32) vec2<f32>: (scale, 8 · sum of the block's int8 values)
    K: int
    M: int = 1


def q8_act(dev: Device, K: int, M: int = 1, label: str = "q8") -> Q8Act:
    return Q8Act(dev.buffer(size=M * K, label=f"{label}.xq"),
                 dev.buffer(size=M * (K // 32) * 8, label=f"{label}.xd"), K, M)


def _out(name: str, out, rows: int, dim: int) -> tuple[dict, bool]:
    """Bindings of an f32 (rows, dim) output or of a Q8Act of the same shape."""
    if isinstance(out, Q8Act):
        need(name, "int8 output", out.xq, rows * dim)
        need(name, "int8 scales", out.xd, rows * dim // 32 * 8)
        return {"xq": out.xq, "xd": out.xd}, True
    need(name, "output", out, rows * dim * F32)
    return {"out": out}, False


def rmsnorm(dev: Device, x, w, out, *, rows: int, dim: int, eps: float, row0: int = 0) -> Op:
    """out[r] = x[row0 + r] / sqrt(mean(x²) + eps) · w for r < rows. x: (row0 + rows, dim) f32;
    w: (dim,) f32; out: (rows, dim) f32, or a Q8Act (int8 blocks for the Q8 GEMV)."""
    if dim % 32:
        raise ValueError(f"rmsnorm: dim {dim} is not a multiple of 32")
    need("norm", "x", x, (row0 + rows) * dim * F32)
    need("norm", "w", w, dim * F32)
    ob, q8 = _out("norm", out, rows, dim)
    pipe = dev.pipeline("norm", consts={"WG": 128, "SUBGROUPS": dev.has_subgroups, "Q8OUT": q8})
    return make_op(dev, pipe, {"x": x, "w": w, **ob}, (rows, 1, 1), [rows, dim, float(eps), row0])


@dataclass
class EmbeddingTable:
    """The token embedding (V, dim) on the GPU in the device's act_type; a table larger than one
    storage binding continues in a second buffer from row `rows0`."""

    t0: object  # (rows0, dim)
    t1: object  # (V - rows0, dim), or None
    rows0: int
    vocab: int
    dim: int
    dtype: str

    @classmethod
    def upload(cls, dev: Device, table: np.ndarray) -> "EmbeddingTable":
        table = np.ascontiguousarray(table, dtype=dev.act_dtype)
        V, d = table.shape
        row = d * table.itemsize
        rows0 = min(V, dev.max_binding // row)
        if (V - rows0) * row > dev.max_binding:
            raise ValueError(f"the embedding table ({V}×{d}) needs more than two storage bindings on "
                             f"{dev.name}; use an adapter with a larger max storage binding")
        t1 = dev.buffer(table[rows0:], label="embed[1]") if rows0 < V else None
        return cls(dev.buffer(table[:rows0], label="embed[0]"), t1, rows0, V, d, dev.act_type)


def embed(dev: Device, ids, table: EmbeddingTable, h, *, rows: int) -> Op:
    """h[m] = table[ids[m]] (as f32) for m < rows. ids: (rows,) u32; h: (rows, dim) f32."""
    need("embed", "ids", ids, rows * 4)
    need("embed", "h", h, rows * table.dim * F32)
    split = table.t1 is not None
    pipe = dev.pipeline("embed", consts={"WG": 64, "SPLIT": split}, types={"emb_t": table.dtype})
    binds = {"ids": ids, "t0": table.t0, "h": h, **({"t1": table.t1} if split else {})}
    return make_op(dev, pipe, binds, dev.grid(-(-rows * table.dim // 4 // 64)), [rows, table.dim, table.rows0])


def _qk_norms(name: str, shape: Heads, q_norm, k_norm) -> dict:
    if (q_norm is None) != (k_norm is None):
        raise ValueError(f"{name}: give both q_norm and k_norm, or neither")
    if q_norm is None:
        return {}
    need(name, "q_norm", q_norm, shape.head_dim * F32)
    need(name, "k_norm", k_norm, shape.head_dim * F32)
    return {"qn": q_norm, "kn": k_norm}


def _check_attention(name: str, shape: Heads, cache_t: str, k_cache, v_cache, rope_table=None):
    if shape.n_heads % shape.n_kv or shape.head_dim % 4 or shape.head_dim > 256:
        raise ValueError(f"{name}: unsupported heads {shape}")
    need(name, "k_cache", k_cache, shape.cache_bytes(cache_t))
    need(name, "v_cache", v_cache, shape.cache_bytes(cache_t))
    if rope_table is not None:
        need(name, "rope table", rope_table, shape.max_seq * shape.head_dim // 2 * 8)


def rope_kv(dev: Device, step, qkv, rope_table, q, k_cache, v_cache, *, rows: int, shape: Heads,
            eps: float, q_norm=None, k_norm=None) -> Op:
    """Prefill: RoPE on the q and k heads of rows of the fused QKV output (qkv: (rows,
    qkv_dim) f32), after Qwen3's q/k RMSNorm when q_norm/k_norm ((head_dim,) f32) are given;
    rotated queries to q (rows, q_dim) f32; keys and values into the caches at positions
    step.pos0 + row. Caches: (max_seq, n_kv, head_dim) of the device's act_type."""
    _check_attention("rope_kv", shape, dev.act_type, k_cache, v_cache, rope_table)
    need("rope_kv", "qkv", qkv, rows * shape.qkv_dim * F32)
    need("rope_kv", "q", q, rows * shape.q_dim * F32)
    norms = _qk_norms("rope_kv", shape, q_norm, k_norm)
    pipe = dev.pipeline("rope_kv", consts={"WG": 64, "QK_NORM": bool(norms), "SUBGROUPS": dev.has_subgroups},
                        types={"cache_t": dev.act_type})
    binds = {"S": step, "qkv": qkv, "cs": rope_table, "q": q, "kc": k_cache, "vc": v_cache, **norms}
    return make_op(dev, pipe, binds, (shape.n_heads + 2 * shape.n_kv, rows, 1),
                   [rows, shape.n_heads, shape.n_kv, shape.head_dim, float(eps)])


def _attention_wg(dev: Device, d4: int) -> int:
    """Invocations per (query, head) workgroup of both attention kernels: 256 on a GPU; on a CPU
    adapter the smallest power of two that is a multiple of hd/4 (16 for hd = 64), because
    lavapipe runs all of a workgroup's invocations on one core, in SIMD chunks of 8 with a
    switch at every barrier, and a short context leaves most of 256 idle (SmolLM2-135M on
    lavapipe, prefill of 37 tokens: 522 → 60 ms for the 30 layers; BENCHMARKS.md)."""
    if dev.is_cpu:
        for wg in (16, 32, 64, 128):
            if wg % d4 == 0:
                return wg
    return 256


def attention_decode(dev: Device, step, qkv, rope_table, k_cache, v_cache, scores, out, *, shape: Heads,
                     eps: float, q_norm=None, k_norm=None) -> Op:
    """Decode: one token's attention straight from the fused QKV output (qkv: (qkv_dim,) f32),
    including (q/k norm,) RoPE and the cache write at step.pos0. scores: (n_heads, max_seq) f32
    scratch; out: (q_dim,) f32, or a Q8Act when head_dim % 32 == 0."""
    _check_attention("attention_decode", shape, dev.act_type, k_cache, v_cache, rope_table)
    need("attention_decode", "qkv", qkv, shape.qkv_dim * F32)
    need("attention_decode", "scores", scores, shape.n_heads * shape.max_seq * F32)
    if isinstance(out, Q8Act) and shape.head_dim % 32:
        raise ValueError("attention_decode: int8 output needs head_dim % 32 == 0")
    ob, q8 = _out("attention_decode", out, 1, shape.q_dim)
    norms = _qk_norms("attention_decode", shape, q_norm, k_norm)
    d4 = shape.head_dim // 4
    pipe = dev.pipeline("attention_decode", consts={"WG": _attention_wg(dev, d4), "D4": d4, "Q8OUT": q8,
                                                    "QK_NORM": bool(norms), "SUBGROUPS": dev.has_subgroups},
                        types={"cache_t": dev.act_type})
    binds = {"S": step, "qkv": qkv, "kc": k_cache, "vc": v_cache, "sc": scores, "cs": rope_table, **norms, **ob}
    return make_op(dev, pipe, binds, (shape.n_heads, 1, 1),
                   [1, shape.n_heads, shape.n_kv, shape.head_dim, shape.max_seq,
                    float(shape.head_dim ** -0.5), float(eps)])


# (TX, TY) of attention_prefill on a GPU, in order of preference: the first whose workgroup memory
# fits. 32 rows × 64 positions for hd ≤ 64 (128 invocations, 35.5 KiB), 32 × 32 for hd = 128
# (64 invocations, 38 KiB). Not yet measured against the others (bench/attention_probe.py --tiles).
_FLASH_GPU = ((16, 8), (8, 16), (8, 8), (16, 4), (8, 4), (4, 4), (4, 2), (2, 2))


def flash_storage(head_dim: int, TX: int, TY: int) -> int:
    """Bytes of workgroup memory attention_prefill.wgsl declares: Qs, KV, Ps and red."""
    rs, br, bc = head_dim // 4 + 1, 4 * TY, 4 * TX
    return 16 * (br + bc) * rs + 16 * bc * (TY + 1) + 4 * br * TX


def _flash_cpu(rows: int) -> tuple:
    """CPU adapters (lavapipe, SmolLM2-135M's heads; bench/attention_probe.py): 16 positions per
    block, and rows per tile as the query rows (·heads per key head) need: 16 below 128 rows (4
    rows at position 256: 1.1 ms against 3.4 for 64-row tiles), 64 from 256 on (384 rows at 256:
    35 ms against 53 for 16-row tiles, as each tile stages the keys and values again)."""
    ty = 16 if rows >= 256 else 8 if rows >= 128 else 4
    return tuple((4, t) for t in (16, 8, 4, 2) if t <= ty)


def flash_config(dev: Device, head_dim: int, rows: int = 256) -> dict:
    """Tile of attention_prefill for `rows` query rows (queries × query heads per key head): TX
    threads along a block of 4·TX cache positions, TY along 4·TY rows; the first candidate that
    fits the adapter's workgroup memory."""
    for tx, ty in (_flash_cpu(rows) if dev.is_cpu else _FLASH_GPU):
        if flash_storage(head_dim, tx, ty) <= dev.max_workgroup_storage and tx * ty <= dev.max_invocations:
            return dict(TX=tx, TY=ty, WG=tx * ty)
    raise ValueError(f"attention_prefill: no tile for head_dim {head_dim} fits {dev.name}'s "
                     f"{dev.max_workgroup_storage} bytes of workgroup memory")


def attention_prefill(dev: Device, step, q, k_cache, v_cache, out, *, rows: int, shape: Heads,
                      config: dict | None = None) -> Op:
    """Prefill: causal attention of rows queries (q: (rows, q_dim) f32, rotated; row m at cache
    position step.pos0 + m) over the cache, which rope_kv has filled; flash attention, no score
    scratch. out: (rows, q_dim) f32. config: {TX, TY} (default: flash_config)."""
    _check_attention("attention_prefill", shape, dev.act_type, k_cache, v_cache)
    need("attention_prefill", "q", q, rows * shape.q_dim * F32)
    need("attention_prefill", "out", out, rows * shape.q_dim * F32)
    G = shape.n_heads // shape.n_kv
    cfg = dict(config or flash_config(dev, shape.head_dim, rows * G))
    cfg["WG"] = cfg["TX"] * cfg["TY"]
    d4 = shape.head_dim // 4
    pipe = dev.pipeline("attention_prefill", consts={**cfg, "D4": d4, "SUBGROUPS": dev.has_subgroups},
                        types={"cache_t": dev.act_type},
                        snippets=flash_snippets(-(-d4 // cfg["TX"]), -(-4 * d4 // cfg["TY"])))
    tiles = -(-rows * G // (4 * cfg["TY"]))
    if tiles > dev.max_groups:
        raise ValueError(f"attention_prefill: {rows} rows are too many for one dispatch; prefill in chunks")
    binds = {"S": step, "q": q, "kc": k_cache, "vc": v_cache, "out": out}
    return make_op(dev, pipe, binds, (tiles, shape.n_kv, 1),
                   [rows, shape.n_heads, shape.n_kv, shape.head_dim, shape.max_seq, float(shape.head_dim ** -0.5)])


def silu_mul(dev: Device, gu, out, *, rows: int, ff: int) -> Op:
    """out = silu(gate) · up from the fused gate/up output gu: (rows, 2·ff) f32, gate and up
    interleaved in blocks of 32. out: (rows, ff) f32 or a Q8Act."""
    if ff % 32:
        raise ValueError(f"silu_mul: ff {ff} is not a multiple of 32")
    need("silu_mul", "gu", gu, rows * 2 * ff * F32)
    ob, q8 = _out("silu_mul", out, rows, ff)
    pipe = dev.pipeline("silu_mul", consts={"WG": 64, "Q8OUT": q8})
    return make_op(dev, pipe, {"gu": gu, **ob}, dev.grid(-(-rows * (ff // 32) // 64)), [rows, ff])


def quantize_q8(dev: Device, x, q: Q8Act, act: str | None = None) -> Op:
    """x (q.M, q.K) of `act` (default: the device's act_type) → q, int8 per 32 values."""
    act = act or dev.act_type
    need("quantize_q8", "x", x, q.M * q.K * esize(act))
    pipe = dev.pipeline("quantize_q8", consts={"WG": 64}, types={"act_t": act})
    return make_op(dev, pipe, {"x": x, "xq": q.xq, "xd": q.xd}, dev.grid(-(-q.M * (q.K // 32) // 64)), [q.M, q.K])
