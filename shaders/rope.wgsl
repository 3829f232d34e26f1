// Rotary position embedding, Hugging Face's rotate_half convention (`//#include rope`): element
// i of a head pairs with element i + hd/2 and both turn by the angle pos · inv_freq[i], whose
// (cos, sin) the model precomputes as a table cs (max_seq, hd/2) of vec2<f32>. The one place
// RoPE is written: rope_kv.wgsl (prefill) and attention_decode.wgsl both call it.

// (a, b) = elements (i, i + hd/2) of a head, already RMS-normed where the model has q/k norms.
fn rope(a: f32, b: f32, c: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a * c.x - b * c.y, b * c.x + a * c.y);
}

// 1 / rms of a head from its sum of squares: Qwen3's per-head q_norm / k_norm.
fn inv_rms(sum_sq: f32, n: u32, eps: f32) -> f32 {
    return inverseSqrt(sum_sq / f32(n) + eps);
}
