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
