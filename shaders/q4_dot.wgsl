// Dot products of packed weights with activations (`//#include q4_dot`), shared by the GEMV
// (q4gsw_gemv.wgsl) and the decode kernel (decode.wgsl). Weights: q4gsw words of 8 nibbles,
// low nibble first, each nibble n = q + 8 (llmgpu/quant.py); int8 weights (quant.Q8Tensor) and
// int8 activations (quantize_q8.wgsl) packed per 8 values as the bytes of elements 0,2,4,6 then
// 1,3,5,7, so that the nibble masks below take even and odd elements apart.

// Dequantization without int→float conversions (a quarter-rate instruction on NVIDIA):
// OR-ing a nibble n into the top mantissa bits of 1.0 gives the float 1 + n/16 exactly, so
// Σ_i x_i·q_i = Σ_i x_i·(n_i − 8) = 16·Σ_i x_i·f_i − 24·Σ_i x_i with f_i = 1 + n_i/16.
// dot8 returns Σ_i x_i·f_i over the 8 nibbles of one word; xa = x[0..3], xb = x[4..7].
fn dot8(w: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let m = 0x00780000u;
    let one = 0x3F800000u;
    let lo = vec4<f32>(bitcast<f32>(((w << 19u) & m) | one), bitcast<f32>(((w << 15u) & m) | one),
                       bitcast<f32>(((w << 11u) & m) | one), bitcast<f32>(((w << 7u) & m) | one));
    let hi = vec4<f32>(bitcast<f32>(((w << 3u) & m) | one), bitcast<f32>(((w >> 1u) & m) | one),
                       bitcast<f32>(((w >> 5u) & m) | one), bitcast<f32>(((w >> 9u) & m) | one));
    return dot(lo, xa) + dot(hi, xb);
}
// Σ_k x_q·n over one vec4<u32> of weights (32 nibbles) and its two vec4<u32> of int8 x.
fn idot32(q: vec4<u32>, xa: vec4<u32>, xb: vec4<u32>) -> i32 {
    let m = 0x0F0F0F0Fu;
    return dot4I8Packed(q.x & m, xa.x) + dot4I8Packed((q.x >> 4u) & m, xa.y)
         + dot4I8Packed(q.y & m, xa.z) + dot4I8Packed((q.y >> 4u) & m, xa.w)
         + dot4I8Packed(q.z & m, xb.x) + dot4I8Packed((q.z >> 4u) & m, xb.y)
         + dot4I8Packed(q.w & m, xb.z) + dot4I8Packed((q.w >> 4u) & m, xb.w);
}

// Σ_k x_q·w_q over 32 int8 weights (qa: values 0-15, qb: 16-31) and 32 int8 activations;
// both are packed even-elements-then-odd per 8 values, so the words pair up directly.
fn idot32w(qa: vec4<u32>, qb: vec4<u32>, xa: vec4<u32>, xb: vec4<u32>) -> i32 {
    return dot4I8Packed(qa.x, xa.x) + dot4I8Packed(qa.y, xa.y) + dot4I8Packed(qa.z, xa.z)
         + dot4I8Packed(qa.w, xa.w) + dot4I8Packed(qb.x, xb.x) + dot4I8Packed(qb.y, xb.y)
         + dot4I8Packed(qb.z, xb.z) + dot4I8Packed(qb.w, xb.w);
}
// The same with f32 activations (x0 = x[0..3], x1 = x[4..7]; w0 even, w1 odd elements).
fn fdot8w(w0: u32, w1: u32, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack4xI8(w0)), vec4<f32>(x0.x, x0.z, x1.x, x1.z))
         + dot(vec4<f32>(unpack4xI8(w1)), vec4<f32>(x0.y, x0.w, x1.y, x1.w));
}

