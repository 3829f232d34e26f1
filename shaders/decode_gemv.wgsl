// The decode kernel's GEMV for one stacked weight (`//#include decode_gemv(K)` makes dot_K for the
// bindings w_K, s_K (and o_K)): int8 activations from workgroup memory (xs and xds in wsm, decode.wgsl).

// The scale of chunk c's group (and its offset when HAS_OFFSETS) of a row whose groups start at gbase.
fn sc_$K(c: u32, gbase: u32) -> vec2<f32> {
    let gi = gbase + (c * 32u) / GS;
//#if HAS_OFFSETS
    return vec2<f32>(f32(s_$K[gi]), o_$K[gi]);
//#else
    return vec2<f32>(f32(s_$K[gi]), 0.0);
//#endif
}

// One chunk of 32 weights (q, chunk c of its row, group scale and offset so) · the activations:
// scale × int8 dot product, with the nibbles' offset of 8 (and the group offset) taken out
// through the block's Σq.
fn term_$K(q: vec4<u32>, c: u32, so: vec2<f32>) -> f32 {
    let dx = xds_get(c);
    var t = so.x * dx.x * f32(idot32(q, wsm[2u * c], wsm[2u * c + 1u]) - i32(dx.y));
//#if HAS_OFFSETS
    t += so.y * dx.x * (dx.y / 8.0);
//#endif
    return t;
}

// This lane's part of row r (K columns): chunks lane, lane + T, ..., T = TPR_$K lanes a row;
// UNROLL (8 or 4) chunks' weights and scales loaded before their arithmetic, so that they are in
// flight together (with one workgroup per SM, these loads are all an SM has in flight; a 16-load
// batch measured no faster on an H200: BENCHMARKS.md).
fn dot_$K(r: u32, K: u32, lane: u32) -> f32 {
    let T = TPR_$K;
    let nch = K / 32u;
    let base = r * nch;
    let g = r * (K / GS);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var c = lane;
    if (UNROLL >= 8u) {
        for (; c + 7u * T < nch; c += 8u * T) {
            let q0 = w_$K[base + c];
            let q1 = w_$K[base + c + T];
            let q2 = w_$K[base + c + 2u * T];
            let q3 = w_$K[base + c + 3u * T];
            let q4 = w_$K[base + c + 4u * T];
            let q5 = w_$K[base + c + 5u * T];
            let q6 = w_$K[base + c + 6u * T];
            let q7 = w_$K[base + c + 7u * T];
            let s0 = sc_$K(c, g); let s1 = sc_$K(c + T, g); let s2 = sc_$K(c + 2u * T, g); let s3 = sc_$K(c + 3u * T, g);
            let s4 = sc_$K(c + 4u * T, g); let s5 = sc_$K(c + 5u * T, g); let s6 = sc_$K(c + 6u * T, g); let s7 = sc_$K(c + 7u * T, g);
            a0 += term_$K(q0, c, s0) + term_$K(q4, c + 4u * T, s4);
            a1 += term_$K(q1, c + T, s1) + term_$K(q5, c + 5u * T, s5);
            a2 += term_$K(q2, c + 2u * T, s2) + term_$K(q6, c + 6u * T, s6);
            a3 += term_$K(q3, c + 3u * T, s3) + term_$K(q7, c + 7u * T, s7);
        }
    }
    for (; c + 3u * T < nch; c += 4u * T) {
        let q0 = w_$K[base + c];
        let q1 = w_$K[base + c + T];
        let q2 = w_$K[base + c + 2u * T];
        let q3 = w_$K[base + c + 3u * T];
        let s0 = sc_$K(c, g); let s1 = sc_$K(c + T, g); let s2 = sc_$K(c + 2u * T, g); let s3 = sc_$K(c + 3u * T, g);
        a0 += term_$K(q0, c, s0);
        a1 += term_$K(q1, c + T, s1);
        a2 += term_$K(q2, c + 2u * T, s2);
        a3 += term_$K(q3, c + 3u * T, s3);
    }
    for (; c < nch; c += T) { a0 += term_$K(w_$K[base + c], c, sc_$K(c, g)); }
    return (a0 + a1) + (a2 + a3);
}
