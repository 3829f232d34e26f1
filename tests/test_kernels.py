"""q4gsw GEMV / GEMM on the real wgpu device (lavapipe in CI) against a NumPy float64 reference."""
import numpy as np
import pytest

from llmgpu.gpu import Device, GpuError
from llmgpu.ops import Q4Linear, linear, run_linear, submit
from llmgpu.quant import dequantize, random_q4

from .conftest import get_device

# Error bounds, normwise: ‖y − ref‖ / ‖ |x|·|W|ᵀ ‖, the scale a dot product's rounding error
# is proportional to (a plain ‖y − ref‖/‖ref‖ blows up where a short dot product cancels).
# f32 activations accumulate in f32 (~1e-7 seen); f16 activations round the output to f16
# (2^-11 relative per element, ~1e-4 seen).
TOL = {np.float32: 1e-5, np.float16: 2e-3}


def reference(dev, t, x):
    xr = x.astype(dev.act_dtype).astype(np.float64)
    return xr @ dequantize(t).astype(np.float64).T


def rel_err(y, ref, x, t):
    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(dequantize(t).astype(np.float64)).T
    return np.linalg.norm(y - ref) / np.linalg.norm(scale)


def check(dev, t, x, **kw):
    y, ops = run_linear(dev, Q4Linear(dev, t), x, **kw)
    ref = reference(dev, t, x)
    assert not np.isnan(y).any(), "an output element was never written"
    err = rel_err(y, ref, x, t)
    assert err < TOL[dev.act_dtype], f"relative error {err:.2e}"
    return ops


SHAPES = [  # (N, K): odd N, K a group multiple that is not a tile multiple, real sizes
    (1, 128), (33, 384), (127, 640), (257, 1152), (64, 4096), (1000, 576)]


@pytest.mark.parametrize("M", [1, 2, 3, 7, 64, 333])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_linear_matches_numpy(dev, rng, M, gs):
    for N, K in SHAPES:
        if K % gs or M * N * K > 2e7:
            continue
        t = random_q4(N, K, gs, rng)
        x = rng.standard_normal((M, K)).astype(np.float32)
        ops = check(dev, t, x)
        assert [op.name for op in ops] == ["q4gsw_gemv:main" if M == 1 else "q4gsw_gemm:main"]


@pytest.mark.parametrize("M", [1, 5])
def test_group_offsets(dev, rng, M):
    for gs in (32, 128):
        t = random_q4(77, 256, gs, rng, offsets=True)
        check(dev, t, rng.standard_normal((M, 256)))


@pytest.mark.parametrize("M", [1, 9])
def test_residual_epilogue(dev, rng, M):
    t = random_q4(45, 192, 64, rng)
    x = rng.standard_normal((M, 192))
    res = rng.standard_normal((M, 45)).astype(np.float32)
    y, _ = run_linear(dev, Q4Linear(dev, t), x, residual=res)
    ref = reference(dev, t, x) + res.astype(dev.act_dtype)
    assert rel_err(y, ref, x, t) < TOL[dev.act_dtype]


def test_gemm_also_serves_m1_and_gemv_refuses_m2(dev, rng):
    t = random_q4(99, 256, 32, rng)
    ops = check(dev, t, rng.standard_normal((1, 256)), force="gemm")
    assert ops[0].name == "q4gsw_gemm:main"
    with pytest.raises(ValueError, match="M == 1"):
        linear(dev, Q4Linear(dev, t), None, None, 2, force="gemv")


@pytest.mark.parametrize("config", [dict(WG=64, TPR=8, R=1), dict(WG=256, TPR=64, R=4), dict(WG=64, TPR=64, R=8),
                                    dict(WG=128, TPR=128, R=2)])
def test_gemv_workgroup_shapes(dev, rng, config):
    for N, K in [(31, 256), (300, 1024)]:
        check(dev, random_q4(N, K, 32, rng), rng.standard_normal((1, K)), config=config)


@pytest.mark.parametrize("config", [dict(BM=32, BN=32, TM=4, TN=4),
                                    dict(BM=128, BN=64, TM=8, TN=4),
                                    dict(BM=64, BN=128, TM=4, TN=8),
                                    dict(BM=128, BN=128, TM=8, TN=4),  # the defaults at prefill sizes
                                    dict(BM=128, BN=64, TM=4, TN=8),
                                    dict(BM=8, BN=128, TM=8, TN=16),  # the CPU adapters' tiles (by M)
                                    dict(BM=16, BN=128, TM=16, TN=16),
                                    dict(BM=32, BN=128, TM=16, TN=16),
                                    dict(BM=64, BN=128, TM=16, TN=16)])
def test_gemm_tile_shapes(dev, rng, config):
    for M, N, K in [(70, 131, 256), (5, 200, 96)]:
        check(dev, random_q4(N, K, 32, rng), rng.standard_normal((M, K)), config=config)


def test_cpu_gemm_tile_follows_m():
    """On a CPU adapter the row tile is as tall as M needs (8 to 64 rows): each row tile
    dequantizes the weights again. Every tile fits the adapter's workgroup memory."""
    from types import SimpleNamespace

    from llmgpu.ops import gemm_config
    cpu = SimpleNamespace(is_cpu=True, max_workgroup_storage=32768)
    assert [gemm_config(cpu, M)["BM"] for M in (1, 4, 8, 9, 16, 17, 37, 64, 65, 512)] == \
        [8, 8, 8, 16, 16, 32, 64, 64, 64, 64]
    for M in (1, 16, 37, 512):
        c = gemm_config(cpu, M)
        assert 4 * 32 * (c["BM"] + c["BN"]) <= cpu.max_workgroup_storage
        assert c["WG"] == (c["BM"] // c["TM"]) * (c["BN"] // c["TN"])
    assert gemm_config(SimpleNamespace(is_cpu=False), 37)["BM"] == 64  # GPUs keep the H100's tiles


def test_weights_split_to_fit_the_binding_limit(rng):
    dev = Device()
    dev.max_binding = 64 * 1024  # pretend: K=1024 rows are 512 B -> 128 rows fit, slices of 256
    t = random_q4(700, 1024, 128, rng, offsets=True)
    with pytest.raises(GpuError, match="max storage-buffer binding"):
        dev.buffer(size=dev.max_binding + 4)
    dev.max_binding = 256 * 512
    lin = Q4Linear(dev, t)
    assert [s.n for s in lin.slices] == [256, 256, 188]
    for M in (1, 3):
        x = rng.standard_normal((M, 1024))
        y, ops = run_linear(dev, lin, x)
        assert len(ops) == 3
        ref = reference(dev, t, x)
        assert not np.isnan(y).any()
        assert rel_err(y, ref, x, t) < TOL[dev.act_dtype]


def test_f32_activations_on_any_device(dev, rng):
    """Activations may stay f32 (e.g. decode's small vectors) whatever the scales' type."""
    t = random_q4(70, 512, 64, rng)
    lin = Q4Linear(dev, t)
    for M in (1, 6):
        x = rng.standard_normal((M, 512)).astype(np.float32)
        xb = dev.buffer(x)
        yb = dev.buffer(np.full((M, 70), np.nan, np.float32))
        submit(dev, linear(dev, lin, xb, yb, M, act="f32", config=(
            dict(WG=64, TPR=32, R=2) if M == 1 else dict(BM=32, BN=32, TM=4, TN=4))))
        y = dev.read(yb, np.float32, (M, 70))
        ref = x.astype(np.float64) @ dequantize(t).astype(np.float64).T
        assert rel_err(y, ref, x, t) < 1e-5


@pytest.mark.parametrize("gs", [32, 64, 128])
def test_q8_gemv(dev, rng, gs):
    """int8 activations: exact against the NumPy model of the int8 quantization, and close to
    the float result (x rounded to 8 bits per 32 values: ~0.5 % relative error)."""
    from llmgpu.quant import q8_activations
    for N, K, off in [(33, 128, False), (257, 1152, True), (1000, 576, False)]:
        if K % gs:
            continue
        t = random_q4(N, K, gs, rng, offsets=off)
        x = rng.standard_normal((1, K)).astype(np.float32)
        y, ops = run_linear(dev, Q4Linear(dev, t), x, q8=True)
        assert [op.name for op in ops] == ["q4gsw_gemv:main"] and not np.isnan(y).any()
        W = dequantize(t).astype(np.float64)
        xd = x.astype(dev.act_dtype)
        ref_q8 = q8_activations(xd).astype(np.float64) @ W.T
        err = rel_err(y, ref_q8, x, t)
        assert err < max(TOL[dev.act_dtype], 1e-3), f"q8-exact error {err:.2e}"  # rounding ties may differ
        ref = xd.astype(np.float64) @ W.T
        assert rel_err(y, ref, x, t) < 1e-2


@pytest.mark.parametrize("M", [1, 4])
def test_bias_epilogue(dev, rng, M):
    t = random_q4(300, 256, 32, rng)
    b = rng.standard_normal(300).astype(np.float32)
    x = rng.standard_normal((M, 256))
    dev.max_binding, saved = 256 * 128, dev.max_binding  # 256 rows of 128 B: two slices, bias offset too
    try:
        lin = Q4Linear(dev, t, bias=b)
    finally:
        dev.max_binding = saved
    assert len(lin.slices) == 2
    for q8 in ((False, True) if M == 1 else (False,)):
        y, _ = run_linear(dev, lin, x, q8=q8)
        ref = reference(dev, t, x) + b
        assert rel_err(y, ref, x, t) < (1e-2 if q8 else TOL[dev.act_dtype])


@pytest.mark.parametrize("q8", [False, True])
def test_int8_weight_gemv(dev, rng, q8):
    """The int8 lm_head format through the GEMV, with f32/f16 or int8 activations."""
    from llmgpu.quant import q8_activations, quantize_q8
    for N, K in [(37, 64), (1000, 576), (260, 2048)]:
        t, err = quantize_q8(rng.standard_normal((N, K)).astype(np.float32))
        assert err < 0.01
        x = rng.standard_normal((1, K)).astype(np.float32)
        y, ops = run_linear(dev, Q4Linear(dev, t), x, q8=q8)
        assert not np.isnan(y).any()
        xr = x.astype(dev.act_dtype)
        ref = (q8_activations(xr) if q8 else xr).astype(np.float64) @ dequantize(t).astype(np.float64).T
        assert rel_err(y, ref, x, t) < max(TOL[dev.act_dtype], 1e-3 if q8 else 0)
    with pytest.raises(ValueError, match="GEMV only"):
        run_linear(dev, Q4Linear(dev, t), rng.standard_normal((3, K)))


def read_q8(dev, q, K):
    """Dequantize a Q8Act read back from the GPU: (K,) f32."""
    words = dev.read(q.xq, np.uint32, (K // 4,))
    b = words.view(np.int8).reshape(K // 8, 8)[:, np.argsort([0, 2, 4, 6, 1, 3, 5, 7])].reshape(K // 32, 32)
    d = dev.read(q.xd, np.float32, (K // 32, 2))
    assert np.array_equal(d[:, 1], 8 * b.astype(np.int64).sum(1)), "the block sums do not match the values"
    return (b * d[:, :1]).reshape(K)


@pytest.mark.parametrize("config", [None, dict(WG=512, TPR=64, R=8), dict(WG=256, TPR=32, R=8),
                                    dict(WG=256, TPR=16, R=4)])  # the defaults on CPU and GPUs
def test_fused_silu_epilogue(dev, rng, config):
    """Gate/up GEMV with rows interleaved per 32 writes silu(gate)·up as int8 blocks."""
    from llmgpu.ops import q8_act
    from llmgpu.model import _interleave32
    from llmgpu.quant import q8_activations
    F, K = 96, 256
    t = random_q4(2 * F, K, 32, rng, scale=0.2)
    x = rng.standard_normal((1, K)).astype(np.float32)
    out = q8_act(dev, F)
    xb = dev.buffer(x.astype(dev.act_dtype))
    submit(dev, linear(dev, Q4Linear(dev, _interleave32(t)), xb, out, 1, silu=True, config=config))
    gu = reference(dev, t, x)[0]
    act = gu[:F] / (1 + np.exp(-gu[:F])) * gu[F:]
    got = read_q8(dev, out, F)
    ref = q8_activations(act[None].astype(np.float32))[0]
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(act).max() + np.abs(ref - act).max()
    with pytest.raises(ValueError, match="64 rows per workgroup"):
        linear(dev, Q4Linear(dev, _interleave32(t)), xb, out, 1, silu=True, config=dict(WG=64, TPR=32, R=2))


@pytest.mark.parametrize("config", [None, dict(WG=64, TPR=16, R=1), dict(WG=256, TPR=32, R=2)])
def test_fused_norm_after_residual_gemv(rng, config):
    """y += x·Wᵀ, then the last workgroup normalises all of y into int8 blocks (the next GEMV's
    input): y as the plain residual GEMV gives it, the int8 blocks as RMSNorm(y)·w quantized,
    with many workgroups (N = 2080 rows: 33+ of them, a ragged last one), twice in a row (the
    finished-counter must be reset by the last workgroup, or the second dispatch never normalises)."""
    from llmgpu.ops import gemv, q8_act
    from tests.reference import rmsnorm
    from tests.test_ops import close_q8
    dev = get_device()
    assert dev.has_coherent
    N, K = 2080, 256
    t = random_q4(N, K, 32, rng, scale=0.2)
    lin = Q4Linear(dev, t)
    x = rng.standard_normal((1, K)).astype(np.float32)
    h0 = rng.standard_normal(N).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(N)).astype(np.float32)
    h, out, xb, wb = dev.buffer(h0), q8_act(dev, N), dev.buffer(x), dev.buffer(w)
    ops = gemv(dev, lin, xb, h, residual=True, act="f32", config=config, norm_after=(wb, out, 1e-5))
    assert [op.name for op in ops] == ["q4gsw_gemv:main"]
    want_h = h0.astype(np.float64)
    for _ in range(2):
        submit(dev, ops)
        want_h = want_h + reference(dev, t, x)[0]
        got_h = dev.read(h, np.float32, (N,))
        assert np.abs(got_h - want_h).max() < 1e-3 * np.abs(want_h).max()
        normed = rmsnorm(got_h[None], w, 1e-5).astype(np.float32)
        # exact but for rare one-step differences where the kernel's f32 norm puts a value on the
        # other side of a rounding boundary (seed 936614920 had one in a block of large values)
        close_q8(read_q8(dev, out, N), normed[0], "the fused norm's int8 blocks")
        dev.write(out.xd, np.zeros(N // 32 * 2, np.float32))  # the next round must write them again


def test_norm_after_falls_back_to_a_norm_op(rng):
    """Where the GEMV cannot fuse the norm (here: its weight split over two bindings), the same
    call returns the GEMV and a norm op."""
    from llmgpu.ops import gemv, q8_act
    dev = get_device()
    t = random_q4(320, 256, 32, rng)
    dev.max_binding, saved = 256 * 128, dev.max_binding
    try:
        lin = Q4Linear(dev, t)
    finally:
        dev.max_binding = saved
    h, out = dev.buffer(size=320 * 4), q8_act(dev, 320)
    ops = gemv(dev, lin, dev.buffer(size=256 * 4), h, residual=True, act="f32",
               norm_after=(dev.buffer(size=320 * 4), out, 1e-5))
    assert [op.name for op in ops] == ["q4gsw_gemv:main"] * 2 + ["norm:main"]
    with pytest.raises(ValueError, match="residual"):
        gemv(dev, lin, dev.buffer(size=256 * 4), h, act="f32", norm_after=(h, out, 1e-5))


def test_cpu_adapters_take_the_lanes_kernels_and_gpus_keep_theirs():
    """CPU adapters: the LANES GEMV for rows up to 2048 (16 × 4 rows; lm_head 64 × 2), the
    cooperative one beyond; the LANES GEMM (one subgroup, rows as M needs, up to 32) where there
    are subgroups, else the tiled one. GPUs: the shapes from their own sweeps, unchanged."""
    from types import SimpleNamespace

    from llmgpu.ops import gemm_config, gemv_config, silu_gemv_config
    cpu = SimpleNamespace(is_cpu=True, has_subgroups=True, subgroup_size=8, max_workgroup_storage=32768)
    gpu = SimpleNamespace(is_cpu=False)
    assert gemv_config(cpu, 576, 960) == dict(WG=16, TPR=1, R=4, LANES=True)
    assert gemv_config(cpu, 576, 49152) == dict(WG=64, TPR=1, R=2, LANES=True)
    assert gemv_config(cpu, 4096, 4096) == dict(WG=128, TPR=16, R=4)
    assert silu_gemv_config(cpu, 576) == dict(WG=32, TPR=1, R=2, LANES=True)
    assert gemv_config(gpu, 576, 960) == dict(WG=256, TPR=32, R=1)
    assert gemv_config(gpu, 576, 49152) == dict(WG=256, TPR=32, R=1)
    assert silu_gemv_config(gpu, 576) == dict(WG=256, TPR=16, R=4)
    assert [gemm_config(cpu, M)["TM"] for M in (1, 8, 9, 17, 37, 128, 256)] == [8, 8, 16, 24, 40, 16, 16]
    assert gemm_config(cpu, 128) == dict(BM=16, BN=64, TM=16, TN=8, WG=8, LANES=True)
    assert gemm_config(cpu, 37) == dict(BM=40, BN=32, TM=40, TN=4, WG=8, LANES=True)
    assert "LANES" not in gemm_config(cpu, 128, route="f16")
    assert "LANES" not in gemm_config(SimpleNamespace(is_cpu=True, max_workgroup_storage=32768), 128)
    assert "LANES" not in gemm_config(gpu, 128)


def _need_cpu(dev):
    if not dev.is_cpu:
        pytest.skip(f"the LANES kernels are the CPU adapters'; {dev.name} is not one")


@pytest.mark.parametrize("config", [dict(WG=16, R=4), dict(WG=8, R=3)])
@pytest.mark.parametrize("w64", [False, True])
def test_lanes_gemv(dev, rng, config, w64):
    """The LANES GEMV against NumPy: f32 and int8 activations, q4gsw with and without offsets,
    group sizes 32-128, int8 weights, a bias, the residual, ragged N, K up to its 2048 limit,
    with 64-bit weight loads and without."""
    from llmgpu.ops import gemv, q8_act, quantize_q8
    from llmgpu.quant import q8_activations, quantize_q8 as quantize_w8
    _need_cpu(dev)
    if w64 and not dev.has_int64:
        pytest.skip(f"{dev.name} lacks shader-int64")
    cfg = dict(config, TPR=1, LANES=True, W64=w64)
    for N, K, gs, kind in [(45, 192, 64, "offsets"), (300, 2048, 128, "plain"), (129, 576, 32, "bias"),
                           (77, 256, 32, "int8")]:
        if kind == "int8":
            t, _ = quantize_w8(rng.standard_normal((N, K)).astype(np.float32))
        else:
            t = random_q4(N, K, gs, rng, offsets=kind == "offsets")
        b = rng.standard_normal(N).astype(np.float32) if kind == "bias" else None
        lin = Q4Linear(dev, t, bias=b)
        x = rng.standard_normal(K).astype(np.float32)
        h0 = rng.standard_normal(N).astype(np.float32)
        W = dequantize(t).astype(np.float64)
        for q8 in (False, True):
            xb = dev.buffer(x)
            xin = xb
            if q8:
                xin = q8_act(dev, K)
                submit(dev, [quantize_q8(dev, xb, xin, act="f32")])
            y = dev.buffer(h0)
            ops = gemv(dev, lin, xin, y, residual=True, config=cfg, act="f32")
            submit(dev, ops)
            got = dev.read(y, np.float32, (N,))
            xr = q8_activations(x[None])[0] if q8 else x
            want = h0 + xr.astype(np.float64) @ W.T + (b if b is not None else 0)
            err = np.linalg.norm(got - want) / np.linalg.norm(np.abs(xr) @ np.abs(W).T)
            assert err < 1e-5, f"{kind} N={N} K={K} q8={q8}: relative error {err:.2e}"


@pytest.mark.parametrize("TM,TN", [(8, 4), (32, 4), (16, 8), (24, 1)])
def test_lanes_gemm(dev, rng, TM, TN):
    """The LANES GEMM (one subgroup per workgroup) against NumPy: ragged M and N, K with a
    partial last chunk of groups (gs 128), offsets, a bias and the residual, in two weight
    slices (the second at an output column offset)."""
    _need_cpu(dev)  # (written for any subgroup size, but run and measured on lavapipe only)
    if not dev.has_subgroups:
        pytest.skip(f"the LANES GEMM needs subgroups, which {dev.name} lacks")
    S = dev.subgroup_size
    cfg = dict(BM=TM, BN=S * TN, TM=TM, TN=TN, WG=S, LANES=True)
    for M, N, K, gs, off in [(37, 300, 384, 128, True), (5, 77, 96, 32, False)]:
        t = random_q4(N, K, gs, rng, offsets=off)
        b = rng.standard_normal(N).astype(np.float32)
        saved = dev.max_binding
        dev.max_binding = 256 * (K // 2)  # slices of 256 rows
        try:
            lin = Q4Linear(dev, t, bias=b)
        finally:
            dev.max_binding = saved
        x = rng.standard_normal((M, K)).astype(np.float32)
        res = rng.standard_normal((M, N)).astype(np.float32)
        y, ops = run_linear(dev, lin, x, residual=res, config=cfg, force="gemm")
        assert len(ops) == len(lin.slices) == 2 - (N < 256) and not np.isnan(y).any()
        ref = reference(dev, t, x) + b + res.astype(dev.act_dtype)
        assert rel_err(y, ref, x, t) < TOL[dev.act_dtype]
