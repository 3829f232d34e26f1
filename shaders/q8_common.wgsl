// Included (//#include q8_common) by kernels that write int8 activations for the Q8 GEMV.
// q8_block takes 32 consecutive values as 8 vec4 (x[0..3], x[4..7], ...) and returns the 8
// packed words (per 8 values: bytes of elements 0,2,4,6 then of 1,3,5,7) and (d, 8·Σq),
// with q = round(x · 127 / max|x|) and x ≈ d·q. Same layout as quantize_q8.wgsl.
struct Q8Block { w0: vec4<u32>, w1: vec4<u32>, d: vec2<f32> }

fn q8_pair(a: vec4<f32>, b: vec4<f32>, id: f32) -> vec3<u32> {   // (even word, odd word, Σq + 512)
    let lo = vec4<i32>(round(a * id));
    let hi = vec4<i32>(round(b * id));
    let s = lo + hi;
    return vec3<u32>(pack4xI8(vec4<i32>(lo.x, lo.z, hi.x, hi.z)), pack4xI8(vec4<i32>(lo.y, lo.w, hi.y, hi.w)),
                     u32(s.x + s.y + s.z + s.w + 512));
}

fn q8_block(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
            v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>) -> Q8Block {
    let m = max(max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))), max(max(abs(v4), abs(v5)), max(abs(v6), abs(v7))));
    let amax = max(max(m.x, m.y), max(m.z, m.w));
    var id = 0.0;
    if (amax > 0.0) { id = 127.0 / amax; }
    let p0 = q8_pair(v0, v1, id);
    let p1 = q8_pair(v2, v3, id);
    let p2 = q8_pair(v4, v5, id);
    let p3 = q8_pair(v6, v7, id);
    let total = i32(p0.z + p1.z + p2.z + p3.z) - 2048;
    return Q8Block(vec4<u32>(p0.x, p0.y, p1.x, p1.y), vec4<u32>(p2.x, p2.y, p3.x, p3.y),
                   vec2<f32>(amax / 127.0, f32(8 * total)));
}
