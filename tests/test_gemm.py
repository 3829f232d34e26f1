"""The prefill GEMM's int8 route (q4gsw_gemm_i8.wgsl) and f16 variant (q4gsw_gemm.wgsl, mul_t =
f16) on the real wgpu device, against NumPy (tests/test_kernels.py covers the f32 route).

The int8 route is checked three ways:
- bit for bit against NumPy's exact integer model (`int_model`: per block of 32, I = Σ q·n in
  int64, y = Σ_b d·s·(I − 8Q) + o·d·Q), on inputs whose scales are powers of two, so that every
  float operation of the kernel's epilogue is exact and any difference is a wrong integer or a
  term applied to the wrong block;
- against the same model with random scales, within the f32 rounding bound of its epilogue:
  |y − model| ≤ (2·blocks + 2)·2⁻²⁴·T, T = Σ_b |each block's terms| (one rounding per product
  and per addition, every partial sum at most T);
- through the GPU's own quantizer against the float64 product of the unquantized activations:
  normwise error ≤ 3e-3 (int8 rounding of x per 32 values; 3–6e-4 seen).
Shapes cover ragged M, N that is not a multiple of any tile, K with group sizes 32 / 64 / 128 and
a last partial step along K, with and without offsets, bias, residual and split weights. The
last tests plant a bug in each part of the kernel and check that a check above fails."""
from functools import partial

import numpy as np
import pytest

from llmgpu import ops
from llmgpu.gpu import Device
from llmgpu.ops import Q4Linear, Q8Act
from llmgpu.quant import Q4Tensor, dequantize, pack_nibbles, random_q4, unpack_nibbles

from .conftest import get_device

F32 = np.float32
EVEN_ODD = [0, 2, 4, 6, 1, 3, 5, 7]


def upload_q8(dev, q, d) -> Q8Act:
    """int8 activations q (M, K) with block scales d (M, K/32), in quantize_q8.wgsl's layout."""
    M, K = q.shape
    b = np.ascontiguousarray(q.astype(np.int8).reshape(M, K // 8, 8)[:, :, EVEN_ODD])
    Q = q.astype(np.int64).reshape(M, K // 32, 32).sum(2)
    xd = np.stack([d, 8.0 * Q], -1).astype(F32)
    return Q8Act(dev.buffer(b.view(np.uint32).reshape(M, K // 4)), dev.buffer(xd), K, M)


def int_model(q, d, t: Q4Tensor):
    """The int8 GEMM computed exactly in NumPy: (y, T), both (M, N) float64. Per block b of 32
    along K: I = Σ q·n over the stored nibbles n (int64), Q = Σ q, and
    y = Σ_b d_b·s_g·(I_b − 8·Q_b) + o_g·d_b·Q_b; T = Σ_b of the two terms' magnitudes."""
    M, K = q.shape
    N, nb = t.shape[0], K // 32
    n = unpack_nibbles(t.qweight).astype(np.int64).reshape(N, nb, 32)
    qq = q.astype(np.int64).reshape(M, nb, 32)
    I = np.einsum("mbk,nbk->mnb", qq, n)
    Q = qq.sum(2)
    g = np.arange(nb) * 32 // t.group_size
    s = t.scales.astype(np.float64)[:, g]
    o = t.offsets.astype(np.float64)[:, g] if t.offsets is not None else np.zeros_like(s)
    d = np.asarray(d, np.float64)
    main = d[:, None, :] * s[None] * (I - 8 * Q[:, None, :])
    offs = o[None] * (d * Q)[:, None, :]
    return (main + offs).sum(2), (np.abs(main) + np.abs(offs)).sum(2)


def run_i8(dev, t, q, d, *, config=None, bias=None, residual=None, split=False):
    """The int8 GEMM on uploaded int8 activations, y (M, N) f32 read back (NaN-poisoned first).
    split: pretend a binding limit of 256 weight rows, so that N > 256 splits into slices."""
    M = q.shape[0]
    N = t.shape[0]
    if split:
        saved, dev.max_binding = dev.max_binding, 256 * (t.shape[1] // 2)
    try:
        lin = Q4Linear(dev, t, bias=bias)
    finally:
        if split:
            dev.max_binding = saved
    if split:
        assert len(lin.slices) > 1
    y0 = np.full((M, N), np.nan, F32) if residual is None else residual.astype(F32)
    y = dev.buffer(y0)
    ops.submit(dev, ops.gemm(dev, lin, upload_q8(dev, q, d), y, rows=M, act="f32", config=config,
                             residual=residual is not None))
    out = dev.read(y, F32, (M, N)).astype(np.float64)
    assert not np.isnan(out).any(), "an output element was never written"
    return out


# (M, N, K, group size, offsets): ragged M (1, 5, 9, 37, 70, 130 rows), N no tile's multiple,
# K = 160 and 576 leave a partial last step for 2 and 4 blocks per step, groups of 32 to 128
SHAPES = [(1, 33, 128, 32, False), (5, 131, 256, 64, True), (9, 100, 160, 32, True),
          (70, 200, 576, 32, True), (37, 257, 1152, 128, True), (130, 64, 384, 128, False), (3, 70, 192, 64, False)]


def exact_inputs(rng, M, N, K, gs, off):
    """Power-of-two scales (d in {1/2, 1}, s in {1/8, 1/4}, o = k/64): every product and partial
    sum of the epilogue is a multiple of 2⁻⁷ below 2¹⁷, hence exact in f32."""
    q = rng.integers(-127, 128, (M, K))
    d = rng.choice([0.5, 1.0], (M, K // 32)).astype(F32)
    nib = rng.integers(0, 16, (N, K))
    s = rng.choice([0.125, 0.25], (N, K // gs)).astype(np.float16)
    o = (rng.integers(-16, 17, (N, K // gs)) / 64).astype(F32) if off else None
    return q, d, Q4Tensor(pack_nibbles(nib), s, gs, o)


def check_i8_exact(dev, rng, configs=(None,), shapes=SHAPES):
    for M, N, K, gs, off in shapes:
        q, d, t = exact_inputs(rng, M, N, K, gs, off)
        want, T = int_model(q, d, t)
        assert T.max() < 2**17, "test inputs too large for exact f32 arithmetic"
        for cfg in configs:
            got = run_i8(dev, t, q, d, config=cfg)
            bad = np.argwhere(got != want)
            first = tuple(bad[0]) if len(bad) else None
            assert not len(bad), (f"{M}x{N}x{K} g{gs} offsets={off} {cfg}: {len(bad)} outputs differ from the "
                                  f"integer model, first at {first}: {got[first]} != {want[first]}")


def random_inputs(rng, M, N, K, gs, off):
    """Activations quantized as quantize_q8 would (d = max|x|/127, q in [-127, 127]) from
    Gaussian x with a random scale per row, and random q4gsw weights."""
    x = rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))
    d = (np.abs(x).reshape(M, K // 32, 32).max(2) / 127).astype(F32)
    q = np.clip(np.rint(x / np.repeat(d, 32, 1)), -127, 127).astype(np.int64)
    return q, d, random_q4(N, K, gs, rng, offsets=off)


def check_i8_bound(dev, rng, shapes=SHAPES):
    for M, N, K, gs, off in shapes:
        q, d, t = random_inputs(rng, M, N, K, gs, off)
        want, T = int_model(q, d, t)
        got = run_i8(dev, t, q, d)
        bound = (2 * (K // 32) + 2) * 2.0**-24 * T
        worst = (np.abs(got - want) / bound).max()
        assert worst <= 1, f"{M}x{N}x{K} g{gs}: error {worst:.2f}x the f32 rounding bound"


def test_i8_gemm_is_bit_exact(dev, rng):
    check_i8_exact(dev, rng)


def test_i8_gemm_within_the_rounding_bound(dev, rng):
    check_i8_bound(dev, rng)


def test_i8_gemm_epilogues(dev, rng):
    """Bias, residual and weights split into slices (each slice writes its own columns)."""
    M, N, K = 11, 300, 256
    q, d, t = random_inputs(rng, M, N, K, 64, True)
    bias = rng.standard_normal(N).astype(F32)
    res = rng.standard_normal((M, N)).astype(F32)
    want, T = int_model(q, d, t)
    got = run_i8(dev, t, q, d, bias=bias, residual=res, split=True)
    bound = (2 * (K // 32) + 2) * 2.0**-24 * T + 2.0**-23 * (np.abs(res) + np.abs(bias) + np.abs(want))
    assert (np.abs(got - (want + bias + res)) <= bound).all()


def test_i8_gemm_through_the_quantizer(dev, rng):
    """Float activations quantized on the GPU (quantize_q8), then the int8 GEMM, against the
    float64 product of the unquantized activations with the dequantized weights."""
    from .test_kernels import rel_err
    for M, N, K, gs, off in SHAPES[1:4]:
        t = random_q4(N, K, gs, rng, offsets=off)
        x = rng.standard_normal((M, K)).astype(F32)
        y, o = ops.run_linear(dev, Q4Linear(dev, t), x, q8=True, force="gemm")
        assert [op.name for op in o] == ["q4gsw_gemm_i8:main"]
        err = rel_err(y, x.astype(dev.act_dtype).astype(np.float64) @ dequantize(t).astype(np.float64).T, x, t)
        assert err < 3e-3, f"{M}x{N}x{K}: normwise error {err:.2e}"


def i8_configs():
    from llmgpu.bench_kernels import GEMM_I8_SWEEP, GEMM_I8_SWEEP_CPU
    return GEMM_I8_SWEEP + GEMM_I8_SWEEP_CPU


def test_i8_gemm_tile_configs(rng):
    """Every tile the sweeps try (and the defaults), exact on a ragged shape with a K tail for 2
    and 4 blocks per step (the device path does not change the tiling: one path suffices)."""
    dev = get_device()
    from llmgpu.ops.linear import gemm_workgroup_bytes
    cfgs = [c for c in i8_configs() if c["BM"] // c["TM"] * (c["BN"] // c["TN"]) <= dev.max_invocations
            and gemm_workgroup_bytes(c, "i8") <= dev.max_workgroup_storage]
    cfgs += [ops.gemm_config(dev, M, 4096, "i8") for M in (1, 40, 512)]
    check_i8_exact(dev, rng, cfgs, shapes=[(70, 131, 160, 32, True)])


# ---- the f16 variant ---------------------------------------------------------------------

def check_f16(dev, rng, configs=(None,), shapes=SHAPES[1:5]):
    """Products in f16, summed in f16 over one 32-wide k tile, then in f32: against float64,
    normwise error ≤ 2e-3 (the f16 rounding of x, W and the partial sums; ~1e-4 seen)."""
    from .test_kernels import rel_err
    for M, N, K, gs, off in shapes:
        t = random_q4(N, K, gs, rng, offsets=off)
        x = rng.standard_normal((M, K)).astype(F32) * 3
        for cfg in configs:
            y, o = ops.run_linear(dev, Q4Linear(dev, t), x, route="f16", force="gemm", config=cfg)
            ref = x.astype(dev.act_dtype).astype(np.float64) @ dequantize(t).astype(np.float64).T
            assert not np.isnan(y).any(), "an output element was never written"
            err = rel_err(y, ref, x, t)
            assert err < 2e-3, f"{M}x{N}x{K} {cfg}: normwise error {err:.2e}"


def test_f16_gemm(rng):
    dev = get_device()
    if "f16" not in ops.gemm_routes(dev):
        pytest.skip("the adapter lacks shader-f16")
    check_f16(dev, rng, [None, dict(BM=64, BN=64, TM=4, TN=4), dict(BM=128, BN=128, TM=8, TN=4)])  # CPU, GPU tiles


# ---- routes ------------------------------------------------------------------------------

def test_routes_follow_the_adapter(rng):
    fast, plain = get_device(), get_device(f16=False, subgroups=False)
    assert ops.gemm_routes(plain) == ("f32", "i8") and ops.gemm_route(plain, "auto") in ("f32", "i8")
    with pytest.raises(ValueError, match="needs shader-f16"):
        ops.gemm_route(plain, "f16")
    with pytest.raises(ValueError, match="not one of auto, f32, i8, f16"):
        ops.gemm_route(fast, "int4")
    assert ops.gemm_route(fast, "auto") == ops.GEMM_ROUTE["cpu" if fast.is_cpu else "gpu"]
    lin = Q4Linear(fast, random_q4(64, 128, 32, rng))
    with pytest.raises(ValueError, match="int8 activations"):
        ops.gemm(fast, lin, fast.buffer(size=4 * 128 * 4), fast.buffer(size=4 * 64 * 4), rows=4, route="i8")


# ---- planted bugs: each check above fails when its kernel is broken ----------------------

# The planted bugs run a check on two shapes that hold every case a bug needs (ragged N, a K
# tail for 2 blocks per step, groups of 32 and 128, offsets): fewer shader compilations.
FEW = [(9, 100, 160, 32, True), (37, 257, 1152, 128, True)]
check_i8_exact_few = partial(check_i8_exact, shapes=FEW)
check_i8_bound_few = partial(check_i8_bound, shapes=FEW)
check_f16_few = partial(check_f16, shapes=FEW)

PLANTED = [  # (check, shader, correct text, broken text)
    # the nibbles of a weight word paired with the wrong activation bytes (odd and even swapped)
    (check_i8_exact_few, "q4gsw_gemm_i8", "return vec4<u32>(q.x & M4, (q.x >> 4u) & M4,",
     "return vec4<u32>((q.x >> 4u) & M4, q.x & M4,"),
    (check_i8_exact_few, "q4gsw_gemm_i8", "    o = off[g];", "    o = 0.0 * off[g];"),  # offsets dropped
    (check_i8_exact_few, "q4gsw_gemm_i8", "v.x * (v.y / 8.0)", "v.x * v.y"),  # offsets times 8·Σx
    # scales read with the row stride of groups of 32: another row's group unless GS = 32
    (check_i8_exact_few, "q4gsw_gemm_i8", "let g = n * (P.K / GS) + b * 32u / GS;",
     "let g = n * (P.K / 32u) + b * 32u / GS;"),
    (check_i8_exact_few, "q4gsw_gemm_i8", "b * 32u / GS", "b * 32u / 64u"),  # a block's group as if GS = 64
    (check_i8_exact_few, "q4gsw_gemm_i8", "MAGIC - u32(i32(v.y))", "MAGIC"),  # nibble n taken as q, not n - 8
    (check_i8_exact_few, "q4gsw_gemm_i8", "if (m < P.M && n < P.N) {", "if (m < P.M && n + 1u < P.N) {"),  # tile edge
    # the last, partial step along K never loaded (the previous step's data used again)
    (check_i8_exact_few, "q4gsw_gemm_i8", "if (bn < nb) {\n//@LOADN", "if (bn + KB <= nb) {\n//@LOADN"),
    (check_i8_exact_few, "q4gsw_gemm_i8", "Am[(idx % KB) * BM + idx / KB] = v;", "Am[(idx / KB) * BM + idx % KB] = v;"),
    (check_i8_bound_few, "q4gsw_gemm_i8", "am{i}.x * s{j}.x", "s{j}.x"),  # activation scale dropped
    (check_f16_few, "q4gsw_gemm", "c{i}_{j} += vec4<f32>(h{i}_{j});", "c{i}_{j} = vec4<f32>(h{i}_{j});"),
]


@pytest.mark.parametrize("check,shader,good,bad", PLANTED, ids=[f"{p[1]}:{p[3][:28]}" for p in PLANTED])
@pytest.mark.parametrize("fast", [True, False], ids=["f16-subgroups", "f32-shared-memory"])
def test_planted_bug_is_caught(rng, monkeypatch, check, shader, good, bad, fast):
    """A bug in the shader's text, or (for text with {i}/{j}) in the generated inner loop."""
    dev = Device(f16=None if fast else False, subgroups=None if fast else False)
    if check is check_f16_few and "f16" not in ops.gemm_routes(dev):
        pytest.skip("no f16 variant on this device path")
    if "{i}" in good:  # generated code: break every accumulator's line
        import importlib
        codegen, linear = (importlib.import_module(f"llmgpu.ops.{m}") for m in ("codegen", "linear"))
        name = "gemm_i8_snippets" if shader == "q4gsw_gemm_i8" else "gemm_snippets"
        real = getattr(codegen, name)

        def broken(*a, **kw):
            out = real(*a, **kw)
            n = 16
            for i in range(n):
                for j in range(n):
                    g, b = good.format(i=i, j=j), bad.format(i=i, j=j)
                    out = {k: v.replace(g, b) for k, v in out.items()}
            return out
        assert good.format(i=0, j=0) in "".join(real(64, 64, 4, 4, **({"KB": 2} if "i8" in shader else {"f16": True}))
                                                 .values()), "the planted bug's anchor text is gone"
        monkeypatch.setattr(linear, name, broken)
    else:
        src = dev._source(shader)
        assert good in src, "the planted bug's anchor text is gone: update PLANTED"
        dev._sources[shader] = src.replace(good, bad)
    with pytest.raises(AssertionError):
        check(dev, rng)
