"""Every kernel op (llmgpu/ops) on the real wgpu device against its NumPy reference
(tests/reference.py): fresh random inputs, several shapes including ragged ones, both device
paths (f16 + subgroups, and the f32 / workgroup-memory fallback), outputs poisoned with NaN
before each run so that an element a kernel never writes shows. The last tests plant a bug in
each shader, through the same code path, and check that the op's check fails."""
import re

import numpy as np
import pytest

from llmgpu import ops
from llmgpu.config import ModelConfig, rope_inv_freq
from llmgpu.gpu import Device, parse_bindings
from llmgpu.quant import q8_activations, random_q4

from . import reference as ref
from .conftest import get_device

F32 = np.float32


def nan_buffer(dev, shape, dtype=F32, label=""):
    return dev.buffer(np.full(shape, np.nan, dtype), label=label)


def read_q8(dev, q, rows, K):
    """A Q8Act read back and dequantized: (rows, K) f32 (checks the stored block sums too)."""
    words = dev.read(q.xq, np.uint32, (rows * K // 4,))
    b = words.view(np.int8).reshape(-1, 8)[:, np.argsort([0, 2, 4, 6, 1, 3, 5, 7])].reshape(-1, 32)
    d = dev.read(q.xd, F32, (rows * K // 32, 2))
    assert np.array_equal(d[:, 1], 8 * b.astype(np.int64).sum(1)), "the block sums do not match the values"
    return (b * d[:, :1]).reshape(rows, K)


def close(got, want, tol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert not np.isnan(got).any(), f"{what}: an element was never written"
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err < tol, f"{what}: max error {err:.2e} relative to the largest value"


def close_q8(got, want, what):
    """int8 blocks against the NumPy quantization of the float reference `want` (rows, K): exact up
    to one quantization step where x·127/max|x| falls within float rounding of a .5 boundary (a GPU
    may round its division differently), and such elements rare; `want` itself within 1e-4 of the
    quantized float result's scale, so a wrong input shows."""
    want = np.asarray(want, np.float32).reshape(-1, 32)
    got = np.asarray(got, np.float64).reshape(-1, 32)
    ref = q8_activations(want).astype(np.float64).reshape(-1, 32)
    assert not np.isnan(got).any(), f"{what}: an element was never written"
    step = np.abs(np.asarray(want, np.float64)).reshape(-1, 32).max(1, keepdims=True) / 127
    diff = np.abs(got - ref)
    assert (diff <= 1.001 * step + 1e-30).all(), f"{what}: off by more than one int8 step"
    off = (diff > 1e-3 * step).mean()
    assert off <= 0.02, f"{what}: {off:.1%} of the values are off by a step"


def heads_config(n_heads, n_kv, hd, max_seq=64, qk_norm=False):
    return ModelConfig.from_hf(dict(model_type="qwen3" if qk_norm else "llama", vocab_size=64, hidden_size=64,
                                    intermediate_size=64, num_hidden_layers=1, num_attention_heads=n_heads,
                                    num_key_value_heads=n_kv, head_dim=hd, max_position_embeddings=max_seq,
                                    rope_theta=10000.0))


def rope_buffer(dev, cfg, max_seq):
    ang = np.arange(max_seq)[:, None] * rope_inv_freq(cfg)[None, :]
    return dev.buffer(np.stack([np.cos(ang), np.sin(ang)], -1).astype(F32))


def step_uniform(dev, pos0):
    from llmgpu.gpu import UNIFORM
    return dev.buffer(np.array([pos0, 0, 0, 0], np.uint32), usage=UNIFORM, binding=False)


# ---- rmsnorm -----------------------------------------------------------------------------

def check_rmsnorm(dev, rng):
    for rows, dim, row0, q8 in [(1, 32, 0, False), (3, 96, 2, False), (5, 576, 1, True), (1, 2048, 0, True)]:
        # small activations and a large eps: an rmsnorm that ignored eps would be far off
        x = (rng.standard_normal((row0 + rows, dim)) * 0.05).astype(F32)
        w = (1 + 0.3 * rng.standard_normal(dim)).astype(F32)
        eps = 1e-3
        out = ops.q8_act(dev, dim, rows) if q8 else nan_buffer(dev, (rows, dim))
        if q8:
            dev.write(out.xq, np.full(rows * dim // 4, 0x7F7F7F7F, np.uint32))
        ops.submit(dev, [ops.rmsnorm(dev, dev.buffer(x), dev.buffer(w), out, rows=rows, dim=dim, eps=eps, row0=row0)])
        want = ref.rmsnorm(x[row0:], w, eps)
        if q8:
            close_q8(read_q8(dev, out, rows, dim), want, "rmsnorm → int8")
        else:
            close(dev.read(out, F32, (rows, dim)), want, 1e-5, "rmsnorm")


def test_rmsnorm(dev, rng):
    check_rmsnorm(dev, rng)


# ---- embed -------------------------------------------------------------------------------

def check_embed(dev, rng):
    V, d = 300, 64
    table = rng.standard_normal((V, d)).astype(F32)
    saved = dev.max_binding
    dev.max_binding = 160 * d * np.dtype(dev.act_dtype).itemsize  # 160 rows per binding: the table splits
    try:
        et = ops.EmbeddingTable.upload(dev, table)
    finally:
        dev.max_binding = saved
    assert et.rows0 == 160 and et.t1 is not None
    for ids in ([0], [159, 160, 161, 299, 5, 250, 160]):
        h = nan_buffer(dev, (len(ids), d))
        ops.submit(dev, [ops.embed(dev, dev.buffer(np.array(ids, np.uint32)), et, h, rows=len(ids))])
        close(dev.read(h, F32, (len(ids), d)), ref.embed(table.astype(dev.act_dtype), ids), 1e-7, "embed")
    small = ops.EmbeddingTable.upload(dev, table[:50])  # one binding: no second table
    assert small.t1 is None
    h = nan_buffer(dev, (3, d))
    ops.submit(dev, [ops.embed(dev, dev.buffer(np.array([49, 0, 7], np.uint32)), small, h, rows=3)])
    close(dev.read(h, F32, (3, d)), ref.embed(table.astype(dev.act_dtype), [49, 0, 7]), 1e-7, "embed, one table")


def test_embed(dev, rng):
    check_embed(dev, rng)


# ---- rope_kv (prefill) -------------------------------------------------------------------

ATTN_SHAPES = [(4, 2, 16, False), (3, 1, 32, True), (2, 2, 64, False), (8, 2, 12, True)]  # heads, kv, hd, qk_norm


def check_rope_kv(dev, rng):
    for nh, nkv, hd, qk in ATTN_SHAPES:
        max_seq, M, pos0 = 40, int(rng.integers(2, 6)), int(rng.integers(0, 30))
        cfg = heads_config(nh, nkv, hd, max_seq, qk)
        shape = ops.Heads(nh, nkv, hd, max_seq)
        qkv = rng.standard_normal((M, shape.qkv_dim)).astype(F32)
        qn, kn = (1 + 0.3 * rng.standard_normal((2, hd))).astype(F32)
        kc, vc = (nan_buffer(dev, (max_seq, nkv, hd), dev.act_dtype) for _ in range(2))
        q = nan_buffer(dev, (M, nh * hd))
        norms = dict(q_norm=dev.buffer(qn), k_norm=dev.buffer(kn)) if qk else {}
        ops.submit(dev, [ops.rope_kv(dev, step_uniform(dev, pos0), dev.buffer(qkv), rope_buffer(dev, cfg, max_seq), q,
                                     kc, vc, rows=M, shape=shape, eps=1e-5, **norms)])
        wq, wk, wv = ref.rope_qk(qkv, nh, nkv, hd, rope_inv_freq(cfg), pos0, 1e-5, *((qn, kn) if qk else ()))
        tol = 1e-5 if dev.act_type == "f32" else 2e-3
        close(dev.read(q, F32, (M, nh, hd)), wq, 1e-5, "rope_kv q")
        K = dev.read(kc, dev.act_dtype, (max_seq, nkv, hd)).astype(F32)
        V = dev.read(vc, dev.act_dtype, (max_seq, nkv, hd)).astype(F32)
        close(K[pos0:pos0 + M], wk, tol, "rope_kv keys")
        close(V[pos0:pos0 + M], wv, tol, "rope_kv values")
        others = np.r_[0:pos0, pos0 + M:max_seq]
        assert np.isnan(K[others]).all() and np.isnan(V[others]).all(), "wrote outside its positions"


def test_rope_kv(dev, rng):
    check_rope_kv(dev, rng)


# ---- attention ---------------------------------------------------------------------------

def random_cache(dev, rng, max_seq, nkv, hd, filled):
    K = np.full((max_seq, nkv, hd), np.nan, F32)
    V = np.full((max_seq, nkv, hd), np.nan, F32)
    K[:filled] = rng.standard_normal((filled, nkv, hd))
    V[:filled] = rng.standard_normal((filled, nkv, hd))
    K, V = K.astype(dev.act_dtype), V.astype(dev.act_dtype)
    return K, V, dev.buffer(K), dev.buffer(V)


# tiles besides the adapter's default that attention_prefill must also get right: the GPUs'
# (16 threads per row, more than lavapipe's subgroup of 8: rows reduced through workgroup
# memory too), one whose row fits a subgroup, and the CPUs' tallest; each where lavapipe's
# workgroup memory allows
PREFILL_TILES = [dict(TX=16, TY=8), dict(TX=8, TY=8), dict(TX=4, TY=16)]


def prefill_cases(rng, G):
    """(rows, pos0): one query at position 0; a few rows at a random later position; and enough
    rows for several tiles of query rows (ragged: rows·G not a multiple of the tile) over
    several key blocks, with the causal diagonal crossing block edges."""
    M = int(rng.integers(17, 46))
    if M * G % 16 == 0:
        M += 1
    return [(1, 0), (int(rng.integers(2, 7)), int(rng.integers(1, 300))), (M, int(rng.integers(0, 120)))]


def check_attention_prefill(dev, rng):
    for nh, nkv, hd in [s[:3] for s in ATTN_SHAPES] + [(8, 2, 128)]:
        for n, (M, pos0) in enumerate(prefill_cases(rng, nh // nkv)):
            max_seq = 320
            shape = ops.Heads(nh, nkv, hd, max_seq)
            K, V, kc, vc = random_cache(dev, rng, max_seq, nkv, hd, pos0 + M)  # NaN from pos0 + M on
            q = rng.standard_normal((M, nh, hd)).astype(F32)
            want = ref.attention(q, K, V, pos0)
            tiles = [None] + [t for t in PREFILL_TILES if n == 2 and
                              ops.flash_storage(hd, t["TX"], t["TY"]) <= dev.max_workgroup_storage]
            for tile in tiles:
                out = nan_buffer(dev, (M + 1, nh * hd))  # a row past the output: must stay NaN
                ops.submit(dev, [ops.attention_prefill(dev, step_uniform(dev, pos0), dev.buffer(q), kc, vc, out,
                                                       rows=M, shape=shape, config=tile)])
                got = dev.read(out, F32, (M + 1, nh, hd))
                close(got[:M], want, 1e-5, f"attention_prefill {shape} rows {M} at {pos0}, tile {tile}")
                assert np.isnan(got[M]).all(), "attention_prefill wrote past its rows"


def test_attention_prefill(dev, rng):
    check_attention_prefill(dev, rng)


def check_attention_decode(dev, rng):
    for nh, nkv, hd, qk in ATTN_SHAPES:
        # pos 1: the one cached position lies in weighted_values' tail loop whatever its unrolling
        for pos in (0, 1, int(rng.integers(2, 300))):
            max_seq = 320
            cfg = heads_config(nh, nkv, hd, max_seq, qk)
            shape = ops.Heads(nh, nkv, hd, max_seq)
            K, V, kc, vc = random_cache(dev, rng, max_seq, nkv, hd, pos)
            qkv = rng.standard_normal((1, shape.qkv_dim)).astype(F32)
            qn, kn = (1 + 0.3 * rng.standard_normal((2, hd))).astype(F32)
            norms = dict(q_norm=dev.buffer(qn), k_norm=dev.buffer(kn)) if qk else {}
            q8 = hd % 32 == 0
            out = ops.q8_act(dev, nh * hd) if q8 else nan_buffer(dev, (nh * hd,))
            scores = dev.buffer(size=nh * max_seq * 4)
            ops.submit(dev, [ops.attention_decode(dev, step_uniform(dev, pos), dev.buffer(qkv), rope_buffer(dev, cfg, max_seq),
                                                  kc, vc, scores, out, shape=shape, eps=1e-5, **norms)])
            wq, wk, wv = ref.rope_qk(qkv, nh, nkv, hd, rope_inv_freq(cfg), pos, 1e-5, *((qn, kn) if qk else ()))
            K2 = K.astype(np.float64)
            V2 = V.astype(np.float64)
            K2[pos], V2[pos] = wk[0], wv[0]  # the kernel uses this token's key and value unrounded
            want = ref.attention(wq, K2, V2, pos)[0].reshape(-1)
            if q8:
                close_q8(read_q8(dev, out, 1, nh * hd)[0], want, "attention_decode → int8")
            else:
                close(dev.read(out, F32, (nh * hd,)), want, 1e-5, "attention_decode")
            tol = 1e-5 if dev.act_type == "f32" else 2e-3
            Kc = dev.read(kc, dev.act_dtype, (max_seq, nkv, hd)).astype(F32)
            close(Kc[pos], wk[0], tol, "attention_decode's key write")
            close(dev.read(vc, dev.act_dtype, (max_seq, nkv, hd)).astype(F32)[pos], wv[0], tol,
                  "attention_decode's value write")
            assert np.isnan(Kc[pos + 1:]).all(), "wrote past its position"


def test_attention_decode(dev, rng):
    check_attention_decode(dev, rng)


# ---- silu_mul and quantize_q8 ------------------------------------------------------------

def check_silu_mul(dev, rng):
    for rows, ff, q8 in [(1, 32, False), (3, 96, False), (1, 256, True), (7, 160, False)]:
        gate, up = rng.standard_normal((2, rows, ff)).astype(F32)
        gu = ref.interleave32(gate, up).astype(F32)
        out = ops.q8_act(dev, ff, rows) if q8 else nan_buffer(dev, (rows, ff))
        ops.submit(dev, [ops.silu_mul(dev, dev.buffer(gu), out, rows=rows, ff=ff)])
        want = gate / (1 + np.exp(-gate.astype(np.float64))) * up
        np.testing.assert_allclose(ref.silu_mul_interleaved(gu, ff), want, rtol=1e-12)  # the reference's layout
        if q8:
            close_q8(read_q8(dev, out, rows, ff), want, "silu_mul → int8")
        else:
            close(dev.read(out, F32, (rows, ff)), want, 1e-5, "silu_mul")


def test_silu_mul(dev, rng):
    check_silu_mul(dev, rng)


def check_quantize_q8(dev, rng):
    for M, K in [(1, 32), (3, 96), (2, 576)]:
        x = (rng.standard_normal((M, K)) * rng.uniform(0.01, 10)).astype(dev.act_dtype)
        x[0, :32] = 0  # an all-zero block: scale 0, no division by zero
        q = ops.q8_act(dev, K, M)
        ops.submit(dev, [ops.quantize_q8(dev, dev.buffer(x), q)])
        close_q8(read_q8(dev, q, M, K), x.astype(F32), "quantize_q8")


def test_quantize_q8(dev, rng):
    check_quantize_q8(dev, rng)


# ---- the linears (tests/test_kernels.py covers them in depth) ---------------------------

def check_linear(dev, rng):
    """Each adapter's default kernels (on CPU adapters the LANES ones), and the tiled GEMM."""
    from .test_kernels import check
    for M, gs, off in [(1, 32, False), (1, 128, True), (5, 64, True), (70, 32, False)]:
        t, x = random_q4(65, 256, gs, rng, offsets=off), rng.standard_normal((M, 256))
        check(dev, t, x)
        if M > 1:
            check(dev, t, x, config=dict(BM=32, BN=32, TM=4, TN=4))


def check_linear_q8(dev, rng):
    from .test_kernels import TOL, reference, rel_err
    t = random_q4(65, 256, 32, rng)
    x = rng.standard_normal((1, 256))
    y, _ = ops.run_linear(dev, ops.Q4Linear(dev, t), x, q8=True)
    assert rel_err(y, reference(dev, t, x), x, t) < max(TOL[dev.act_dtype], 1e-2)


# ---- the ops layer's own checks ----------------------------------------------------------

def test_bindings_are_named_and_read_only_where_declared():
    dev = get_device()
    code, _ = dev.source("rope_kv", {"WG": 64, "QK_NORM": False, "SUBGROUPS": False}, {"cache_t": "f32"})
    b = parse_bindings(code)
    assert b["qkv"] == (2, "read-only-storage") and b["kc"] == (7, "storage") and b["S"] == (1, "uniform")
    assert "qn" not in b and "kn" not in b  # without q/k norms those bindings do not exist at all


def test_wrong_wiring_is_refused(rng):
    dev = get_device()
    x, w = dev.buffer(size=4 * 64), dev.buffer(size=4 * 64)
    with pytest.raises(ValueError, match="x holds 256 bytes but the shape needs 512"):
        ops.rmsnorm(dev, x, w, dev.buffer(size=512), rows=2, dim=64, eps=1e-5)
    pipe = dev.pipeline("silu_mul", consts={"WG": 64, "Q8OUT": False})
    with pytest.raises(ValueError, match=r"bindings \['out'\] missing, \['y'\] not declared"):
        dev.bind_group(pipe, {"P": dev.uniform([1, 32]), "gu": x, "y": w})
    with pytest.raises(Exception, match="no override or //#if named TYPO"):
        dev.pipeline("silu_mul", consts={"WG": 64, "Q8OUT": False, "TYPO": 1})


def test_expanded_gemv_source_is_plain_wgsl(tmp_path):
    """The generated inner loops leave no placeholder behind, and --dump-wgsl writes what was compiled."""
    dev = Device(dump_wgsl=str(tmp_path))
    lin = ops.Q4Linear(dev, random_q4(64, 128, 32, np.random.default_rng(0), offsets=True))
    ops.gemv(dev, lin, dev.buffer(size=512), dev.buffer(size=256), act="f32", config=dict(WG=64, TPR=16, R=4))
    (f,) = tmp_path.glob("q4gsw_gemv.main.*.wgsl")
    text = f.read_text()
    assert not re.search(r"^\s*//[@#]", text, re.M), "a placeholder or directive line is left"
    assert "var acc3 = 0.0;" in text and "off[gi3]" in text and "// override R = 4" in text



def test_expanded_flash_attention_source_is_plain_wgsl(tmp_path):
    """attention_prefill's generated accumulators and prefetch registers: every placeholder
    filled, named registers only (the GPUs' tile for hd = 128: NJ = 4 columns, NL = 16 loads)."""
    dev = Device(dump_wgsl=str(tmp_path))
    shape = ops.Heads(8, 2, 128, 64)
    kv = dev.buffer(size=shape.cache_bytes(dev.act_type))
    ops.attention_prefill(dev, step_uniform(dev, 0), dev.buffer(size=4 * 8 * 128 * 4), kv, kv,
                          dev.buffer(size=4 * 8 * 128 * 4), rows=4, shape=shape, config=dict(TX=8, TY=8))
    (f,) = tmp_path.glob("attention_prefill.main.*.wgsl")
    text = f.read_text()
    assert not re.search(r"^\s*//[@#]", text, re.M), "a placeholder or directive line is left"
    assert "var o3_3 = vec4<f32>(0.0);" in text and "o3_4" not in text and "// override TX = 8" in text
    assert "pv15 = load_kv(k0, kend, j, lid + 15u * WG, true);" in text and "pk16" not in text
    assert not re.search(r"array<vec4<f32>, \d+>", text), "an indexed register array"

# ---- planted bugs: each check above fails when its kernel is broken ----------------------

PLANTED = [  # (check, shader, correct text, broken text)
    (check_rmsnorm, "norm", "/ f32(P.D) + P.eps)", "/ f32(P.D))"),  # RMSNorm ignoring epsilon
    (check_embed, "embed", "t1[(id - P.rows0) * d4 + c]", "t1[id * d4 + c]"),  # 2nd table indexed by id
    (check_rope_kv, "rope", "a * c.x - b * c.y", "a * c.x + b * c.y"),  # RoPE's sign
    (check_rope_kv, "rope_kv", "let pos = S.pos0 + m;", "let pos = S.pos0;"),  # every row at pos0
    # flash attention: a query that does not see itself (causal mask at the diagonal)
    (check_attention_prefill, "attention_prefill", "kp > vec4<u32>(lim.x)", "kp >= vec4<u32>(lim.x)"),
    # a tile that stops one position short (its last row misses its own key)
    (check_attention_prefill, "attention_prefill", "let kend = S.pos0 + last / G + 1u;", "let kend = S.pos0 + last / G;"),
    # online softmax without the rescale of the output and sums, or of the sums alone
    (check_attention_prefill, "attention_prefill", "let alpha = exp2(mrow - mnew);", "let alpha = vec4<f32>(1.0);"),
    (check_attention_prefill, "attention_prefill", "lsum = lsum * alpha +", "lsum = lsum +"),
    # GQA: query heads of a key head interleaved instead of consecutive
    (check_attention_prefill, "attention_prefill", "j * G + R % G;", "j + (R % G) * P.n_kv;"),
    # a block's position past the tile read from the cache (NaN there) instead of zero
    (check_attention_prefill, "attention_prefill", "k0 + c >= kend)", "k0 + c > kend)"),
    # p·V skipping the first position of every block
    (check_attention_prefill, "attention_prefill", "for (var c = 0u; c < BC; c++)", "for (var c = 1u; c < BC; c++)"),
    # row maxima / sums across subgroups (workgroup memory) missing the last part
    (check_attention_prefill, "attention_prefill", "for (var k = w; k < TX; k += w)", "for (var k = w; k + w < TX; k += w)"),
    # outputs of padding rows (past the last query) or past the head written
    (check_attention_prefill, "attention_prefill", "if (R < P.M * G && d4 < D4)", "if (d4 < D4)"),
    (check_attention_prefill, "attention_prefill", "if (R < P.M * G && d4 < D4)", "if (R < P.M * G)"),
    (check_attention_decode, "attention_common", "for (; t < Lc; t += ngroups)", "for (; t + 1u < Lc; t += ngroups)"),  # skips the last
    (check_attention_decode, "attention_decode", "let j = h / (P.n_heads / P.n_kv);", "let j = h % P.n_kv;"),  # GQA
    (check_attention_decode, "reduce", "t = max(t, red[i]);", "t = min(t, red[i]);"),  # a broken max
    (check_silu_mul, "silu_mul", "gu[i + 8u]", "gu[i + 4u]"),  # up read from the gate block
    (check_quantize_q8, "q8_common", "id = 127.0 / amax;", "id = 126.0 / amax;"),  # wrong int8 scale
    (check_linear, "q4_dot", "let m = 0x00780000u;", "let m = 0x00700000u;"),  # a nibble bit lost
    (check_linear, "q4gsw_gemm", "let o24 = bitcast<f32>(r.z) - 24.0 * s;", "let o24 = bitcast<f32>(r.z) - 23.0 * s;"),
    # the CPU adapters' LANES kernels: a GEMV invocation one row off, the GEMM's second word half
    (check_linear, "q4gsw_gemv", "* ROWS_PER_WG + lid;", "* ROWS_PER_WG + lid + 1u;"),
    (check_linear, "q4gsw_gemm", "let sh = (q % 2u) * 16u;", "let sh = (q % 2u) * 12u;"),
    (check_linear_q8, "q4_dot", "dot4I8Packed((q.x >> 4u) & m, xa.y)", "dot4I8Packed((q.x >> 3u) & m, xa.y)"),
]


@pytest.mark.parametrize("check,shader,good,bad", PLANTED, ids=[f"{p[1]}:{p[3][:24]}" for p in PLANTED])
@pytest.mark.parametrize("fast", [True, False], ids=["f16-subgroups", "f32-shared-memory"])
def test_planted_bug_is_caught(rng, check, shader, good, bad, fast):
    dev = Device(f16=None if fast else False, subgroups=None if fast else False)
    src = dev._source(shader)
    assert good in src, "the planted bug's anchor text is gone: update PLANTED"
    if "k + w < TX" in bad and dev.has_subgroups and dev.subgroup_size >= max(t["TX"] for t in PREFILL_TILES):
        pytest.skip(f"subgroups of {dev.subgroup_size} hold a whole row of every tile: the cross-subgroup "
                    "path is not taken here (lavapipe's 8-wide subgroups take it)")
    if "ROWS_PER_WG + lid + 1u" in bad and not dev.is_cpu or "* 12u" in bad and not (dev.is_cpu and dev.has_subgroups):
        pytest.skip(f"{dev.name} does not run this LANES kernel by default (CPU adapters do; the GEMM's needs subgroups)")
    if shader == "reduce" and not dev.has_subgroups:
        good, bad = "red[lid] = max(red[lid], red[lid + s]);", "red[lid] = min(red[lid], red[lid + s]);"
    dev._sources[shader] = src.replace(good, bad)
    for name in list(dev._sources):  # shaders that include it are expanded again
        if name != shader:
            del dev._sources[name]
    with pytest.raises(AssertionError):
        check(dev, rng)
