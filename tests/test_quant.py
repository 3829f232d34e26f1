import gguf
import numpy as np
import pytest

from llmgpu.quant import (GROUP_SIZES, dequantize, from_gguf_q4_0, from_gguf_q4_1,
                          pack_nibbles, quantize, unpack_nibbles)


def test_pack_layout_is_low_nibble_first():
    nib = np.arange(16, dtype=np.uint8).reshape(1, 16)
    words = pack_nibbles(nib)
    assert words.dtype == np.uint32 and words.shape == (1, 2)
    assert words[0, 0] == 0x76543210 and words[0, 1] == 0xFEDCBA98
    np.testing.assert_array_equal(unpack_nibbles(words), nib)


@pytest.mark.parametrize("gs", GROUP_SIZES)
def test_quantize_roundtrip_and_reported_error(rng, gs):
    N, K = 37, 4 * gs
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.01, 3)
    t, err = quantize(w, gs)
    assert t.qweight.shape == (N, K // 8) and t.scales.shape == (N, K // gs)
    assert t.scales.dtype == np.float16 and t.qweight.dtype == np.uint32
    wd = dequantize(t)
    true_err = np.linalg.norm(wd - w) / np.linalg.norm(w)
    assert abs(err - true_err) < 1e-6
    assert err < 0.13  # 4-bit on Gaussian weights: ~0.08-0.11 depending on group size
    # Re-quantizing the dequantized weights reproduces them exactly.
    t2, err2 = quantize(wd, gs)
    np.testing.assert_allclose(dequantize(t2), wd, rtol=0, atol=1e-6 * np.abs(wd).max())


def test_scale_search_beats_absmax(rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    _, err = quantize(w, 32)
    g = w.reshape(64, -1, 32)
    s = np.abs(g).max(axis=2, keepdims=True) / 7
    q = np.clip(np.rint(g / s), -8, 7)
    err_absmax = np.linalg.norm((q * s - g).ravel()) / np.linalg.norm(w)
    assert err < 0.95 * err_absmax


def test_bad_group_size_is_a_clear_error(rng):
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize(rng.standard_normal((4, 48)), 32)
    with pytest.raises(ValueError, match="group size must be one of"):
        quantize(rng.standard_normal((4, 96)), 48)


def test_q4_0_import_is_exact(rng):
    N, K = 5, 96
    w = rng.standard_normal((N, K)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).reshape(N, K)
    t = from_gguf_q4_0(raw, N, K)
    assert t.group_size == 32 and t.offsets is None
    np.testing.assert_array_equal(dequantize(t), ref)


def test_q4_1_import_is_exact_with_offsets(rng):
    N, K = 7, 64
    w = (rng.standard_normal((N, K)) + rng.uniform(-1, 1)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(N, K)
    t = from_gguf_q4_1(raw, N, K)
    assert t.offsets is not None and t.offsets.dtype == np.float32
    np.testing.assert_allclose(dequantize(t), ref, rtol=1e-6, atol=1e-7)


def test_int8_weights_keep_the_largest_value(rng):
    """quantize_q8: scale = max|w| / 127 per 32, so the largest value of each block is exact (up to
    the f16 scale) and nothing is clipped; a max/128 scale would clip it to 127/128 of itself."""
    from llmgpu.quant import quantize_q8
    w = rng.standard_normal((9, 96)).astype(np.float32) * rng.uniform(0.1, 10)
    t, err = quantize_q8(w)
    wd = dequantize(t).reshape(9, 3, 32)
    g = w.reshape(9, 3, 32)
    i = np.abs(g).argmax(axis=2)[..., None]
    big, got = np.take_along_axis(g, i, 2), np.take_along_axis(wd, i, 2)
    np.testing.assert_allclose(got, big, rtol=2e-3)  # f16 scale: 2^-11 relative
    np.testing.assert_allclose(t.scales.astype(np.float32), (np.abs(g).max(2) / 127).astype(np.float16), rtol=0)
    assert err < 0.01


# ---- group size per tensor, asymmetric, importance (issue 13) -------------------------------

def test_group_size_falls_back_to_the_largest_that_divides_k():
    """Catches: a fallback to the smallest size (32) or to any size that fits, and K % 32 != 0 accepted."""
    from llmgpu.quant import group_size_for
    assert group_size_for(576, 128) == 64 and group_size_for(1536, 128) == 128
    assert group_size_for(96, 128) == 32 and group_size_for(96, 64) == 32 and group_size_for(576, 32) == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        group_size_for(48, 32)
    with pytest.raises(ValueError, match="must be one of"):
        group_size_for(96, 48)


def reference_asymmetric_minmax(w, gs):
    """NumPy, from the formula: s = (max - min) / 15 (f16), o = min + 8 s, q = clip(rint((w - o) / s))."""
    g = w.reshape(w.shape[0], -1, gs)
    lo, hi = g.min(2, keepdims=True), g.max(2, keepdims=True)
    s = ((hi - lo) / 15).astype(np.float16).astype(np.float32)
    o = lo + 8 * s
    q = np.clip(np.rint((g - o) / s), -8, 7)
    return (q * s + o).reshape(w.shape)


@pytest.mark.parametrize("gs", GROUP_SIZES)
def test_asymmetric_round_trip(rng, gs):
    """Offsets are stored and used (w = s q + o), the search is never worse than min/max, the reported
    error is the true one, and shifted weights gain from offsets. Catches: o = min (not min + 8 s),
    offsets dropped, a search that loses the min/max start."""
    N, K = 23, 3 * gs
    w = (rng.standard_normal((N, K)) + rng.uniform(-2, 2, (N, 1))).astype(np.float32)
    t, err = quantize(w, gs, asymmetric=True)
    assert t.offsets is not None and t.offsets.shape == (N, K // gs) and t.offsets.dtype == np.float32
    q = unpack_nibbles(t.qweight).astype(np.float32).reshape(N, -1, gs) - 8
    mine = (q * t.scales.astype(np.float32)[..., None] + t.offsets[..., None]).reshape(N, K)
    np.testing.assert_array_equal(dequantize(t), mine)
    assert abs(err - np.linalg.norm(mine - w) / np.linalg.norm(w)) < 1e-6
    per_group = lambda a: np.square(a - w).reshape(N, -1, gs).sum(2)  # noqa: E731
    assert np.all(per_group(mine) <= per_group(reference_asymmetric_minmax(w, gs)) * (1 + 1e-5) + 1e-12)
    assert err < 0.8 * quantize(w, gs)[1]


def test_asymmetric_reproduces_q4_1_weights(rng):
    """Weights that are already 4-bit asymmetric (GGUF Q4_1, dequantized) come back exactly: the min/max
    start hits their grid. Catches a start that shrinks the range or rounds the offset."""
    N, K = 16, 128
    w = rng.standard_normal((N, K)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(N, K)
    t, err = quantize(ref, 32, asymmetric=True)
    np.testing.assert_allclose(dequantize(t), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def skewed_layer(rng, N=48, K=256):
    """A random weight and inputs whose channels are correlated and differ in scale by orders of
    magnitude (as LLM activations do): a few channels carry most of the output."""
    w = rng.standard_normal((N, K)).astype(np.float32)
    mix = np.eye(K) + 1.2 * rng.standard_normal((K, K)) / np.sqrt(K)  # correlated channels
    x = ((rng.standard_normal((512, K)) @ mix) * np.exp(1.5 * rng.standard_normal(K))).astype(np.float32)
    return w, x


def out_err(x, w, wq):
    return np.linalg.norm(x @ (w - wq).T) / np.linalg.norm(x @ w.T)


@pytest.mark.parametrize("asym", [False, True])
def test_importance_lowers_output_error_on_skewed_activations(rng, asym):
    """The weighted search trades weight error for output error. Catches: importance ignored (equal
    errors), or applied inverted (output error rises)."""
    w, x = skewed_layer(rng)
    plain, _ = quantize(w, 32, asymmetric=asym)
    weighted, _ = quantize(w, 32, asymmetric=asym, importance=np.square(x).mean(0))
    assert out_err(x, w, dequantize(weighted)) < 0.85 * out_err(x, w, dequantize(plain))


def test_bad_importance_is_a_clear_error(rng):
    with pytest.raises(ValueError, match="importance must be 64"):
        quantize(rng.standard_normal((4, 64)), 32, importance=np.ones(32))
    with pytest.raises(ValueError, match="importance must be"):
        quantize(rng.standard_normal((4, 64)), 32, importance=-np.ones(64))


@pytest.mark.parametrize("asym", [False, True])
def test_awq_scaling_lowers_output_error(rng, asym):
    """calibrate.awq_quantize on a random layer with skewed activations: the quantized W diag(s),
    divided back by s, has a clearly lower output error than the plain search; the error it reports
    is the one measured. Catches: scales not divided back (error explodes), s applied to the wrong
    axis, the search not choosing by output error."""
    from llmgpu.calibrate import awq_quantize, loss_rows
    w, x = skewed_layer(rng)
    [(qt, _)], s, alpha, err = awq_quantize(x, [w], [32], asym, fold=True)
    wq = dequantize(qt) / s
    assert err == pytest.approx(out_err(loss_rows(x), w, wq), rel=1e-3)  # the rows the choice is measured on
    assert alpha is not None and (alpha > 0 or asym)  # (asymmetric: alpha 0 wins on ~3 % of seeds)
    assert out_err(x, w, wq) < 0.7 * out_err(x, w, dequantize(quantize(w, 32, asymmetric=asym)[0]))


def test_weighted_search_clips_weights_on_unimportant_inputs(rng):
    """With calibration importance the search may clip a group's largest weight when its input barely
    matters, for finer steps on the inputs that do (quant.CLIP_CANDIDATES); the plain search (the
    default path) never clips it. Catches: the clip candidates not tried (the weighted error stays
    at the unclipped optimum), or tried without importance (the default recipe changed)."""
    w = rng.standard_normal((64, 64)).astype(np.float32) * 0.1
    w[:, 0] = 1.0 * np.sign(rng.standard_normal(64))  # group 0's largest weights, all on input 0...
    imp = np.ones(64, np.float32)
    imp[0] = 1e-4  # ...whose input is almost always ~0
    t, _ = quantize(w, 32, importance=imp)
    m = np.abs(w.reshape(64, 2, 32)).max(axis=2)
    assert np.all(np.abs(t.scales[:, 0].astype(np.float32)) < m[:, 0] / 8 * 0.95)  # input 0 clipped: finer steps
    r = (dequantize(t) - w)[:, 1:32]
    no_clip = quant_no_clip(w, imp)
    assert (r ** 2).sum() < 0.7 * ((no_clip - w)[:, 1:32] ** 2).sum()
    plain, _ = quantize(w, 32)
    assert np.all(np.abs(plain.scales.astype(np.float32)) >= m / 8 * (1 - 2e-3))


def quant_no_clip(w, imp):
    from llmgpu import quant
    saved, quant.CLIP = quant.CLIP, False
    try:
        return dequantize(quantize(w, 32, importance=imp)[0])
    finally:
        quant.CLIP = saved


@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("gs", [32, 64])
def test_gptq_without_correlation_is_the_weighted_search(rng, asym, gs):
    """With uncorrelated inputs of equal power (H = c I) no rounding error has anywhere to go, so
    calibrate.gptq must give exactly what the weighted search gives, levels, scales and offsets:
    catches a wrong level rounding, packing, offset or scale choice inside the GPTQ loop, and an
    error spread where H says there is no correlation. K = 320 is not a multiple of the 128-column
    batch (a ragged last batch)."""
    from llmgpu.calibrate import gptq
    w = rng.standard_normal((24, 320)).astype(np.float32)
    t = gptq(w, 3.0 * np.eye(320), gs, asym, damp=0.5)
    want, _ = quantize(w, gs, asymmetric=asym, importance=np.ones(320))
    assert np.array_equal(t.qweight, want.qweight) and np.array_equal(t.scales, want.scales)
    assert (t.offsets is None) == (not asym)
    if asym:
        np.testing.assert_allclose(t.offsets, want.offsets, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("asym", [False, True])
def test_gptq_lowers_held_out_output_error_on_correlated_inputs(rng, asym):
    """On correlated inputs of unequal scale GPTQ's error feedback lowers the output error on rows it was
    not fitted on, against the weighted search with the same importance; more damping moves it
    towards that search. Catches: no error feedback (equal errors), feedback with the wrong sign or
    through the wrong Cholesky factor (higher error)."""
    from llmgpu.calibrate import gptq
    w = rng.standard_normal((48, 256)).astype(np.float32)
    z = rng.standard_normal((768, 64)) @ rng.standard_normal((64, 256))  # 64 factors drive 256 channels...
    x = ((z + 0.3 * rng.standard_normal((768, 256))) * np.exp(0.5 * rng.standard_normal(256))).astype(np.float32)
    fit, held = x[:512], x[512:]
    H = fit.T.astype(np.float64) @ fit / len(fit)
    base = dequantize(quantize(w, 32, asymmetric=asym, importance=np.diag(H))[0])
    errs = [out_err(held, w, dequantize(gptq(w, H, 32, asym, damp=d))) for d in (0.1, 1e4)]
    assert errs[0] < 0.7 * out_err(held, w, base), (errs, out_err(held, w, base))  # 0.41-0.49 over 20 seeds
    assert errs[1] == pytest.approx(out_err(held, w, base), rel=0.05)


@pytest.mark.parametrize("gs", [32, 64])
def test_refit_scales_solves_each_rows_least_squares(rng, gs):
    """calibrate.refit_scales against a direct solve per row: with the levels q fixed, the group
    scales s minimise (w - Q s)^T Hd (w - Q s) for Q the (K, G) matrix of each group's levels, so
    s = (Q^T Hd Q)^-1 Q^T Hd w. Every row's new scales equal that solve in f16 or, where they would
    not lower the damped loss, the old scales; most rows take new ones and the loss falls. Catches:
    a wrong block of A or b (a different solve), the damping left out or doubled, a row-wise keep
    that keeps the worse scales. K = 320: G = 10 or 5."""
    from llmgpu.calibrate import refit_scales
    N, K = 20, 320
    w = rng.standard_normal((N, K))
    x = (rng.standard_normal((600, 48)) @ rng.standard_normal((48, K)) + 0.5 * rng.standard_normal((600, K))) \
        * np.exp(0.5 * rng.standard_normal(K))
    H = x.T @ x / len(x)
    t, _ = quantize(w, gs, importance=np.diag(H))
    damp = 0.1
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(K)
    r = refit_scales(t, w, H, damp)
    assert np.array_equal(r.qweight, t.qweight) and r.offsets is None and r.scales.dtype == np.float16
    q = unpack_nibbles(t.qweight).astype(np.float64) - 8
    G = K // gs
    loss = lambda row, s: (lambda e: e @ Hd @ e)(w[row] - np.repeat(s.astype(np.float64), gs) * q[row])  # noqa: E731
    took = 0
    for row in range(N):
        Q = np.zeros((K, G))
        Q[np.arange(K), np.arange(K) // gs] = q[row]
        want = np.linalg.solve(Q.T @ Hd @ Q, Q.T @ Hd @ w[row]).astype(np.float16)
        if np.array_equal(r.scales[row], t.scales[row]):
            assert loss(row, want) >= loss(row, t.scales[row]) * (1 - 1e-9)
        else:
            assert np.array_equal(r.scales[row], want)
            took += 1
    assert took >= N // 2
    assert sum(loss(i, r.scales[i]) for i in range(N)) < 0.98 * sum(loss(i, t.scales[i]) for i in range(N))


@pytest.mark.parametrize("gs,block", [(32, 128), (64, 48)])
def test_cd_levels_is_exact_coordinate_descent(rng, gs, block):
    """calibrate.cd_levels against a plain reference: columns in order, each row's level at column j
    set to whichever of the 16 levels gives the smallest damped loss (w - w^)^T Hd (w - w^) with every
    other level as it stands. Same levels, same scales; the loss falls. K = 320 is not a multiple of
    the lazy block (128 or 48, which also splits groups), so the block edges and the ragged last block
    are crossed. Catches: a stale P inside or across blocks (the lazy update's halves), a wrong sign or
    damping in the per-coordinate minimiser, clipping to the wrong range, scales changed."""
    from llmgpu.calibrate import cd_levels
    N, K = 6, 320
    w = rng.standard_normal((N, K)) * 1.5
    x = (rng.standard_normal((500, 32)) @ rng.standard_normal((32, K)) + 0.3 * rng.standard_normal((500, K))) \
        * np.exp(0.5 * rng.standard_normal(K))
    H = x.T @ x / len(x)
    t, _ = quantize(w, gs)
    damp = 0.1
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(K)
    r = cd_levels(t, w, H, damp, block=block)
    assert np.array_equal(r.scales, t.scales) and r.offsets is None
    s = np.repeat(t.scales.astype(np.float64), gs, axis=1)
    q = unpack_nibbles(t.qweight).astype(np.int64) - 8
    loss = lambda row, qq: (lambda e: e @ Hd @ e)(w[row] - s[row] * qq)  # noqa: E731
    want = q.copy()
    for row in range(N):
        for j in range(K):
            trial = want[row].copy()
            costs = []
            for level in range(-8, 8):
                trial[j] = level
                costs.append(loss(row, trial))
            want[row, j] = int(np.argmin(costs)) - 8
    got = unpack_nibbles(r.qweight).astype(np.int64) - 8
    assert np.array_equal(got, want)
    assert (got != q).mean() > 0.05  # the descent moved levels: not a no-op
    assert sum(loss(i, got[i]) for i in range(N)) < 0.9 * sum(loss(i, q[i]) for i in range(N))
